# %% [markdown]
# # 01 · The base model and its prior
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# DreamBooth starts from a text-to-image model that already knows the world. Before we teach it a new
# subject, we look inside it, sample from it by hand, and see its **prior**: what it believes
# "a photo of a ball" looks like. That prior is exactly what DreamBooth must not destroy.

# %% [markdown]
# ## What you will learn
#
# - what a latent text-to-image model is made of: tokenizer, text encoder, UNet, VAE, scheduler
# - how sampling works: a denoising loop with classifier-free guidance, written by hand in a few lines, then `dbtutor.sample`, and that both give the same image
# - what the class prior is, in pictures and in numbers
# - how prompt, seed, guidance scale and steps change the picture (a sampler widget)

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
SAMPLER_STEPS = None      # denoising steps of samples and class images (toy 20, sd15 20)
GUIDANCE = None           # classifier-free guidance scale (toy 5.0, sd15 7.5)
# this notebook
SAMPLES_PER_PROMPT = None # images per prompt in the grids (toy 8, sd15 4)
GUIDANCES = [1.0, 3.0, 5.0, 9.0]     # the guidance scales compared in section 2

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, samples_per_prompt=SAMPLES_PER_PROMPT,
                 sampler_steps=SAMPLER_STEPS, guidance=GUIDANCE)

# %% [markdown]
# ## 1. The parts of the model
#
# A Stable-Diffusion-style model works in a small **latent** space: the VAE compresses an image into a
# latent (the toy model: 64x64x3 pixels into 16x16x4 numbers; SD v1.5: 512x512x3 into 64x64x4), the tokenizer and
# text encoder turn the prompt into vectors, and the UNet predicts the noise in a noisy latent given those
# vectors. The scheduler turns the noise predictions into a denoising path.

# %%
import torch

import dbtutor

pipe = C.load_pipeline()
for name in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
    part = getattr(pipe, name)
    n = sum(p.numel() for p in part.parameters()) if hasattr(part, "parameters") else 0
    print(f"{name:13s} {type(part).__name__:30s} {n / 1e6:8.2f} M parameters")
c = pipe.unet.config
print(f"latents {c.in_channels}x{c.sample_size}x{c.sample_size}, images {C.resolution}x{C.resolution}x3, "
      f"prompts up to {pipe.tokenizer.model_max_length} tokens")

# %% [markdown]
# ## 2. Sampling, by hand
#
# Start from pure noise in latent space. At each step the UNet predicts the noise twice, with the prompt and
# with an empty prompt; **classifier-free guidance** pushes away from the unconditional prediction:
# `noise_pred = noise_uncond + g * (noise_cond - noise_uncond)`. The scheduler (DDIM here) removes a little of that
# noise. At the end the VAE decodes the latent into pixels.

# %%
from diffusers import DDIMScheduler

tok, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # never clip *latents* to [-1, 1]
scheduler.set_timesteps(C.sampler_steps)

ids = tok(["", C.class_prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
          return_tensors="pt").input_ids.to(C.device)
with torch.no_grad():
    embeds = text_encoder(ids)[0]                    # [empty prompt, class prompt], as the pipeline orders them
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(C.seeds[0]))[None].to(C.device, C.dtype)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_uncond, noise_cond = unet(x, t, embeds).sample.chunk(2)
        noise_pred = noise_uncond + C.guidance * (noise_cond - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    decoded = vae.decode(latents / vae.config.scaling_factor).sample[0]
by_hand = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

# %% [markdown]
# `dbtutor.sample` does the same through the diffusers pipeline, in seeded batches. Same prompt, seed, steps and
# scheduler: the same picture (in float16 on a GPU, up to a few levels of rounding).

# %%
import matplotlib.pyplot as plt
import numpy as np

from dbtutor.course.plots import image_grid

packaged = np.asarray(dbtutor.sample(pipe, C.class_prompt, C.seeds[0], C.sampler_steps, C.guidance,
                                     scheduler="ddim")[0])
diff = np.abs(by_hand.astype(int) - packaged.astype(int))
print(f"by hand vs dbtutor.sample: largest pixel difference {diff.max()}, mean {diff.mean():.3f} (of 255)")
assert diff.mean() < 0.5 and diff.max() <= (2 if C.dtype == torch.float32 else 16)
image_grid([by_hand, packaged], col_labels=["by hand", "dbtutor.sample"], scale=2.0)
plt.show()

# %% [markdown]
# Guidance trades variety for prompt-following: with `g = 1` the prompt barely steers the sample, large `g`
# follows the prompt harder. Same seed, four guidance scales:

# %%
prompt = f"a photo of a {C.colour} {C.class_noun} on the grass"
images = [dbtutor.sample(pipe, prompt, C.seeds[0], C.sampler_steps, g)[0] for g in GUIDANCES]
image_grid(images, col_labels=[f"guidance {g:g}" for g in GUIDANCES], scale=1.8, title=repr(prompt))
plt.show()

# %% [markdown]
# ## 3. The prior
#
# The **prior** of a class is everything the model generates for the bare class prompt: balls (or dogs) of many
# colours, kinds and places. Adding words narrows it. DreamBooth will teach the model one *specific* ball under a
# new word; the prior-preservation loss exists to keep these rows unchanged while it does.

# %%
PRIOR_PROMPTS = [C.class_prompt, f"a photo of a {C.colour} {C.class_noun}", f"{C.class_prompt} {C.scene}"]
images = C.sample_rows(pipe, PRIOR_PROMPTS)
image_grid(images, rows=len(PRIOR_PROMPTS), row_labels=PRIOR_PROMPTS, col_labels=[f"seed {s}" for s in C.seeds])
plt.show()

# %% [markdown]
# The prior in numbers. The course measures samples with `C.measure()`: on the toy world a **judge** (a small
# classifier of world images that names object, colour, pattern, scene and "look"; the subject's look never occurs
# in the base world), on real photos **DINOv2** (image embeddings; the DreamBooth paper's subject-fidelity score).
# Here: how much the bare class samples already resemble our subject, before any training. This is where "class
# drift" starts; 06 measures it again after training.

# %%
M = C.measure()
prior = images[:len(C.seeds)]                        # the first row: the bare class prompt
if M is not None:
    print(f"{C.class_prompt!r}, base model: {M.share(prior):.2f} ({M.unit})")

# %% [markdown]
# On the toy world the judge also reads the attributes of the class samples:

# %%
from dbtutor.course.plots import attribute_bars

if M is not None and M.kind == "judge":
    from dbtutor.toyworld.judge import predict
    seen = predict(M.judge, prior)
    attribute_bars(seen, title=f"{C.class_prompt!r}: {len(prior)} samples, as the judge sees them")
    plt.show()

# %% [markdown]
# ## 4. Play
#
# Change the prompt, the seed, the guidance scale or the number of steps, then press **sample**. The panel
# calls the same `dbtutor.sample` as above. On the toy world try words it knows (colours, `striped`, `dotted`,
# `checkered`, `box`, `cone`, `star`, `ring`, `heart`, `on the beach`, `at night`) and one it does not (`sks`).

# %%
from dbtutor.course.widgets import sampler_panel

sampler_panel(pipe, C.class_prompt, seed=C.seeds[0], num=4, guidance=C.guidance, steps=C.sampler_steps,
              batch_size=C.sample_batch)

# %% [markdown]
# **Next:** [02 · Instance data and the identifier](02_instance_data_and_identifier.ipynb): the few images of
# our subject, and the word we will teach the model to use for it.
