# %% [markdown]
# # 03 · The latent cache
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# The UNet is trained on VAE latents. The VAE's encoder is frozen during DreamBooth, so the latent of an
# image never changes: encode each image once, keep the result, and every training step skips the
# encoder. That is NeMo's `use_cached_latents`.

# %% [markdown]
# ## What you will learn
#
# - how the VAE compresses an image into a latent and back, by hand
# - what a latent looks like, and how faithful the reconstruction is
# - `dbtutor.cache_latents`: one entry per image, keyed by its content, the crop and the VAE, so only what changed is re-encoded
# - what the cache saves per step, measured

# %%
# Colab only: bring in the course and install it. Elsewhere nothing happens (install once: `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    import glob, google.colab.drive, os, runpy, shutil, subprocess  # noqa: E401
    REPO = ""  # the course's git URL (tools/set_repo_url.py sets it); empty: a dbtutor*.zip, or the course in Drive
    CONTENT = os.environ.get("DBTUTOR_COLAB_CONTENT", "/content")  # Colab's files (a test sets another folder)
    HOME, DRIVE = f"{CONTENT}/dbtutor", f"{CONTENT}/drive/MyDrive"  # the course is installed from HOME
    if not (os.path.isdir(HOME) or REPO or glob.glob(f"{CONTENT}/dbtutor*.zip")):  # nothing here: look in Drive
        google.colab.drive.mount(f"{CONTENT}/drive")  # Colab asks for access, once per runtime
    # A new runtime takes the first way in: REPO; the course kept in Drive (MyDrive/dbtutor), once Drive is mounted;
    # the newest dbtutor*.zip uploaded here, or in MyDrive. A zip's one top folder, whatever its name (GitHub's
    # "Download ZIP" makes dbtutor-main/), becomes HOME.
    if not os.path.isdir(HOME) and REPO:
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, HOME], check=True)
    elif not os.path.isdir(HOME) and os.path.isfile(f"{DRIVE}/dbtutor/pyproject.toml"):
        shutil.copytree(f"{DRIVE}/dbtutor", HOME, ignore=shutil.ignore_patterns("work", "hub"))  # not your work
    elif not os.path.isdir(HOME) and (zips := glob.glob(f"{CONTENT}/dbtutor*.zip") + glob.glob(f"{DRIVE}/dbtutor*.zip")):
        shutil.unpack_archive(max(zips, key=os.path.getmtime), f"{CONTENT}/unzipped")  # Python's zipfile: no prompts
        shutil.move(glob.glob(f"{CONTENT}/unzipped/*")[0], HOME)
    if not os.path.isfile(f"{HOME}/pyproject.toml"):
        raise SystemExit("dbtutor: no course: upload dbtutor.zip here or to MyDrive, keep MyDrive/dbtutor or set REPO")
    runpy.run_path(f"{HOME}/tools/colab_install.py")  # pip install -e HOME, Colab's own torch kept; once per runtime

# %% tags=["parameters"]
# Parameters. PROFILE sets every default at once: "toy" (the embedded model: any CPU, minutes) or "sd15" (Stable
# Diffusion v1.5 at 512 px with the DreamBooth paper's dog or your photos: a GPU). PROFILE, SUBJECT_DIR, CLASS_NOUN
# and the course's run settings are kept for the next notebooks (WORK/course.json). A setting left None takes the
# environment's value (DBTUTOR_PROFILE, DBTUTOR_NB_<NAME>), else an earlier notebook's, else the profile's (in
# brackets).
PROFILE = None
SUBJECT_DIR = None        # your own photos: a folder of 3-5 images of one subject
CLASS_NOUN = None         # what they show: "dog", "backpack", ... (toy ball, sd15 dog)
WORK_ON_DRIVE = None      # Colab: None keeps class images, runs and these choices in Google Drive; False: not
# the course's runs: a value set here is used by the next notebooks too, so they find the runs made with it
MAX_STEPS = None          # trainer.max_steps: training steps of every run (toy 500, sd15 400)
# this notebook
TIMING_REPEATS = 10       # repeats of each timed call in section 3

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, max_steps=MAX_STEPS)
CACHE_DEMO = C.work / "cache_demo"          # a scratch folder, rebuilt on every run

# %% [markdown]
# ## 1. Encode and decode, by hand

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import dbtutor
from dbtutor.course.plots import image_grid, latent_figure

pipe = C.load_pipeline()
vae = pipe.vae
paths = dbtutor.scan_images(C.subject_dir)
x = dbtutor.preprocess(dbtutor.load_image(paths[0]), C.resolution)[None].to(C.device, C.dtype)
with torch.no_grad():
    posterior = vae.encode(x).latent_dist          # a diagonal Gaussian: mean and log-variance
    z = posterior.mean
    recon = vae.decode(z).sample

def to_image(t):
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

print(f"image {tuple(x.shape[1:])} -> latent {tuple(z.shape[1:])}: {x[0].numel() / z[0].numel():.0f}x fewer numbers")
print(f"latent std {z.float().std():.3f}; times the VAE's scaling_factor {vae.config.scaling_factor}: "
      f"{(z.float() * vae.config.scaling_factor).std():.3f} (the diffusion model expects about 1)")
latent_figure(to_image(x[0]), z[0].float(), to_image(recon[0]))
plt.show()

# %% [markdown]
# All instance images and their reconstructions: the VAE is lossy, and the model can never draw finer detail than its VAE decodes.

# %%
with torch.no_grad():
    xs = torch.stack([dbtutor.preprocess(dbtutor.load_image(p), C.resolution) for p in paths]).to(C.device, C.dtype)
    rs = torch.cat([vae.decode(vae.encode(x1[None]).latent_dist.mean).sample for x1 in xs])   # one at a time
mse = ((rs.float() - xs.float()) ** 2).mean().item()
print(f"reconstruction MSE {mse:.4f}, PSNR {10 * np.log10(4 / mse):.1f} dB")
image_grid([to_image(t) for t in torch.cat([xs, rs])], rows=2, row_labels=["original", "decoded"], scale=1.4)
plt.show()

# %% [markdown]
# ## 2. The cache
#
# `dbtutor.cache_latents` does the encoding above for a list of images and stores each latent distribution
# (mean and log-variance, as safetensors) under a key = hash(image bytes, resolution, crop, VAE weights).
# Training draws `mean + std * noise` from it at every step, as NeMo does. The same numbers as by hand (up to
# float16 rounding on a GPU, where the cache encodes several images in one batch):

# %%
import shutil

shutil.rmtree(CACHE_DEMO, ignore_errors=True)
image_dir, cache_dir = CACHE_DEMO / "images", CACHE_DEMO / "latents"
image_dir.mkdir(parents=True)
for p in paths:
    shutil.copy(p, image_dir / p.name)
demo_paths = dbtutor.scan_images(image_dir)

c = dbtutor.cache_latents(demo_paths, cache_dir, vae, C.resolution, center_crop=True)
print(f"first call: {len(c['encoded'])} encoded, {len(c['reused'])} reused; mean {tuple(c['mean'].shape)}")
tol = 1e-4 if C.dtype == torch.float32 else 2e-2      # relative: float16 keeps about 3 significant digits
ours, cached = z[0].float().cpu(), c["mean"][0]
assert (cached - ours).abs().max() <= tol * ours.abs().max(), "cache and hand encoding disagree"
print(f"cached mean == the latent encoded by hand (largest difference {(cached - ours).abs().max():.2g})")

c = dbtutor.cache_latents(demo_paths, cache_dir, vae, C.resolution, center_crop=True)
print(f"second call: {len(c['encoded'])} encoded, {len(c['reused'])} reused")
assert not c["encoded"]

# %% [markdown]
# Edit one image (here: mirror it) and only that one is encoded again; the others are reused. A new resolution, another crop or another VAE would re-encode everything.

# %%
from PIL import ImageOps

ImageOps.mirror(dbtutor.load_image(demo_paths[0])).save(demo_paths[0])
c = dbtutor.cache_latents(demo_paths, cache_dir, vae, C.resolution, center_crop=True)
print(f"after editing {demo_paths[0].name}: {len(c['encoded'])} encoded, {len(c['reused'])} reused")
assert [p.name for p in c["encoded"]] == [demo_paths[0].name]
print((cache_dir / "manifest.json").read_text()[:400], "...")

# %% [markdown]
# ## 3. What the cache saves
#
# Without the cache, each step encodes its images (1 instance + 1 class image per step here). With it, a step
# only draws from the stored Gaussian. Measured on this machine:

# %%
import time

from dbtutor.latent_cache import sample_latents
from dbtutor.course.plots import bar_chart


def timed(fn):
    fn()                                           # warm up
    if C.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        fn()
    if C.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / TIMING_REPEATS


batch = xs[:2]
with torch.no_grad():
    t_online = timed(lambda: vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor)
    t_cached = timed(lambda: sample_latents(c["mean"][:2], c["logvar"][:2]) * vae.config.scaling_factor)
print(f"per step: encode {t_online * 1e3:.1f} ms, cached draw {t_cached * 1e3:.3f} ms; "
      f"over {C.max_steps} steps: {t_online * C.max_steps:.1f} s vs {t_cached * C.max_steps:.2f} s")
bar_chart({"encode every step": t_online * 1e3, "cached latents": t_cached * 1e3}, "ms per training step",
          "latents for one step (1 instance + 1 class image)", fmt="{:.2f}")
plt.show()

# %% [markdown]
# On the toy model the encoder is small; for SD v1.5 at 512 px it is a large share of each step, and the
# cache also removes the encoder from GPU memory during training. The price: a cache holds one crop per image,
# so `use_cached_latents` needs `center_crop=true` (random crops need online encoding).
#
# **Next:** [04 · Regularization images](04_regularization_images.ipynb).
