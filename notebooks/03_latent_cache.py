# %% [markdown]
# # 03 · The latent cache
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/03_latent_cache.ipynb)
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
# Colab only: fetch the course and install it. Elsewhere nothing happens (install once with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    import importlib.metadata
    import os
    import subprocess

    if not os.path.isdir("/content/dbtutor"):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/dbtutor/dbtutor", "/content/dbtutor"],
                       check=True)
    keep = f"torch=={importlib.metadata.version('torch')}"   # Colab's own CUDA torch: never a multi-GB reinstall
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/dbtutor", keep], check=True)
    sys.path.insert(0, "/content/dbtutor")      # the running kernel sees the package without a restart
    from google.colab import output
    output.enable_custom_widget_manager()        # ipywidgets 8 in Colab

# %% tags=["parameters"]
# Parameters: every setting of this notebook. To move to Stable Diffusion v1.5 on a GPU with your own photos,
# edit this cell only (see 07_going_further). Settings that cost time can also be changed without editing, from
# the environment: DBTUTOR_NB_<NAME>=value (e.g. DBTUTOR_NB_MAX_STEPS=50; the names are listed next to them);
# DBTUTOR_PRETRAINED, DBTUTOR_JUDGE and DBTUTOR_NB_WORK replace the paths.
import os
from pathlib import Path

import torch

import dbtutor
from dbtutor.widgets import model_tag, setting

# the base model: the embedded toy world, small enough for a CPU.
# On a GPU: PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRETRAINED = os.environ.get("DBTUTOR_PRETRAINED") or dbtutor.ROOT / "data/models/toyworld"
JUDGE_DIR = Path(os.environ.get("DBTUTOR_JUDGE") or dbtutor.ROOT / "data/models/toyworld-judge")  # toy world only
# the subject: a few images of one object, its identifier and its class noun
# (SD v1.5: dbtutor.ROOT / "data/dog6", "sks", "dog", RESOLUTION = 512)
SUBJECT_DIR = dbtutor.ROOT / "data/subjects/twotone_ball"
IDENTIFIER, CLASS_NOUN = "sks", "ball"
INSTANCE_PROMPT = f"a photo of {IDENTIFIER} {CLASS_NOUN}"        # model.data.instance_prompt
CLASS_PROMPT = f"a photo of a {CLASS_NOUN}"                      # model.data.regularization_prompt
PROMPTS = [f"a photo of {IDENTIFIER} {CLASS_NOUN} on the snow", CLASS_PROMPT]   # the subject elsewhere; the bare class
RESOLUTION = 64                                                  # model.data.resolution
# training (DBTUTOR_NB_MAX_STEPS, DBTUTOR_NB_PRIOR_LOSS_WEIGHT, DBTUTOR_NB_NUM_REG_IMAGES)
MAX_STEPS = setting("MAX_STEPS", 500)
PRIOR_LOSS_WEIGHT = setting("PRIOR_LOSS_WEIGHT", 1.0)
NUM_REG_IMAGES = setting("NUM_REG_IMAGES", 200)
LR = 1e-4
TRAIN_TEXT_ENCODER = False                                       # model.train_text_encoder (07 compares)
SEED = 0
# sampling: the same seeds for every model, so differences come from training alone
# (DBTUTOR_NB_SAMPLES_PER_PROMPT, DBTUTOR_NB_SAMPLER_STEPS)
SAMPLES_PER_PROMPT = setting("SAMPLES_PER_PROMPT", 8)
SEEDS = list(range(1000, 1000 + SAMPLES_PER_PROMPT))
SAMPLER_STEPS = setting("SAMPLER_STEPS", 20)
GUIDANCE = 5.0
# everything this notebook writes goes under WORK (gitignored, shared by the notebooks; delete it to start over)
WORK = Path(os.environ.get("DBTUTOR_NB_WORK") or dbtutor.ROOT / "work/notebooks")
REG_DIR = WORK / "reg" / f"{CLASS_NOUN}-{model_tag(PRETRAINED)}"   # class images of this base model
# this notebook: how many timing repeats for the cost comparison
TIMING_REPEATS = setting("TIMING_REPEATS", 10)
CACHE_DEMO = WORK / "cache_demo"          # a scratch folder, rebuilt on every run
# device and dtype, picked automatically
DEVICE = dbtutor.pick_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
PRECISION = "16" if DEVICE.type == "cuda" else "32"               # trainer.precision
print(f"base model {PRETRAINED} on {DEVICE} ({DTYPE}); results in {WORK}")

# %% [markdown]
# ## 1. Encode and decode, by hand

# %%
import matplotlib.pyplot as plt
import numpy as np

from dbtutor.plots import image_grid, latent_figure

pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
vae = pipe.vae
paths = dbtutor.scan_images(SUBJECT_DIR)
x = dbtutor.preprocess(dbtutor.load_image(paths[0]), RESOLUTION)[None].to(DEVICE, DTYPE)
with torch.no_grad():
    posterior = vae.encode(x).latent_dist          # a diagonal Gaussian: mean and log-variance
    z = posterior.mean
    recon = vae.decode(z).sample

def to_image(t):
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

print(f"image {tuple(x.shape[1:])} -> latent {tuple(z.shape[1:])}: {x[0].numel() / z[0].numel():.0f}x fewer numbers")
print(f"latent std {z.std():.3f}; times the VAE's scaling_factor {vae.config.scaling_factor}: "
      f"{(z * vae.config.scaling_factor).std():.3f} (the diffusion model expects about 1)")
latent_figure(to_image(x[0]), z[0], to_image(recon[0]))
plt.show()

# %% [markdown]
# All instance images and their reconstructions: the VAE is lossy, and the model can never draw finer detail than its VAE decodes.

# %%
with torch.no_grad():
    xs = torch.stack([dbtutor.preprocess(dbtutor.load_image(p), RESOLUTION) for p in paths]).to(DEVICE, DTYPE)
    rs = vae.decode(vae.encode(xs).latent_dist.mean).sample
mse = ((rs.float() - xs.float()) ** 2).mean().item()
print(f"reconstruction MSE {mse:.4f}, PSNR {10 * np.log10(4 / mse):.1f} dB")
image_grid([to_image(t) for t in torch.cat([xs, rs])], rows=2, row_labels=["original", "decoded"], scale=1.4)
plt.show()

# %% [markdown]
# ## 2. The cache
#
# `dbtutor.cache_latents` does the encoding above for a list of images and stores each latent distribution
# (mean and log-variance, as safetensors) under a key = hash(image bytes, resolution, crop, VAE weights).
# Training draws `mean + std * noise` from it at every step, as NeMo does. Same numbers as by hand:

# %%
import shutil

shutil.rmtree(CACHE_DEMO, ignore_errors=True)
image_dir, cache_dir = CACHE_DEMO / "images", CACHE_DEMO / "latents"
image_dir.mkdir(parents=True)
for p in paths:
    shutil.copy(p, image_dir / p.name)
demo_paths = dbtutor.scan_images(image_dir)

c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
print(f"first call: {len(c['encoded'])} encoded, {len(c['reused'])} reused; mean {tuple(c['mean'].shape)}")
assert torch.allclose(c["mean"][0].to(z.device), z[0].float(), atol=1e-4), "cache and hand encoding disagree"
print("cached mean == the latent encoded by hand")

c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
print(f"second call: {len(c['encoded'])} encoded, {len(c['reused'])} reused")
assert not c["encoded"]

# %% [markdown]
# Edit one image (here: mirror it) and only that one is encoded again; the others are reused. A new resolution, another crop or another VAE would re-encode everything.

# %%
from PIL import ImageOps

ImageOps.mirror(dbtutor.load_image(demo_paths[0])).save(demo_paths[0])
c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
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
from dbtutor.plots import bar_chart

batch = xs[:2]
with torch.no_grad():
    vae.encode(batch)                          # warm up
    t0 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        online = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
    t_online = (time.perf_counter() - t0) / TIMING_REPEATS
    t0 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        cached = sample_latents(c["mean"][:2], c["logvar"][:2]) * vae.config.scaling_factor
    t_cached = (time.perf_counter() - t0) / TIMING_REPEATS
print(f"per step: encode {t_online * 1e3:.1f} ms, cached draw {t_cached * 1e3:.3f} ms; "
      f"over {MAX_STEPS} steps: {t_online * MAX_STEPS:.1f} s vs {t_cached * MAX_STEPS:.2f} s")
bar_chart({"encode every step": t_online * 1e3, "cached latents": t_cached * 1e3}, "ms per training step",
          "latents for one step (1 instance + 1 class image)", fmt="{:.2f}")
plt.show()

# %% [markdown]
# On the toy model the encoder is small; for SD v1.5 at 512 px it is a large share of each step, and the
# cache also removes the encoder from GPU memory during training. The price: a cache holds one crop per image,
# so `use_cached_latents` needs `center_crop=true` (random crops need online encoding).
#
# **Next:** [04 · Regularization images](04_regularization_images.ipynb).
