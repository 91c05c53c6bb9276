# %% [markdown]
# # 01 · The base model and its prior
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/01_base_model_and_prior.ipynb)
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
# this notebook: prompts that show the prior, and guidance scales to compare
PRIOR_PROMPTS = [CLASS_PROMPT, "a photo of a red ball", "a photo of a ball on the snow"]
GUIDANCES = [1.0, 3.0, 5.0, 9.0]
# device and dtype, picked automatically
DEVICE = dbtutor.pick_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
PRECISION = "16" if DEVICE.type == "cuda" else "32"               # trainer.precision
print(f"base model {PRETRAINED} on {DEVICE} ({DTYPE}); results in {WORK}")

# %% [markdown]
# ## 1. The parts of the model
#
# A Stable-Diffusion-style model works in a small **latent** space: the VAE compresses an image into a
# latent (here 64x64x3 pixels into 16x16x4 numbers; for SD v1.5, 512x512x3 into 64x64x4), the tokenizer and
# text encoder turn the prompt into vectors, and the UNet predicts the noise in a noisy latent given those
# vectors. The scheduler turns the noise predictions into a denoising path.

# %%
pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
for name in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
    part = getattr(pipe, name)
    n = sum(p.numel() for p in part.parameters()) if hasattr(part, "parameters") else 0
    print(f"{name:13s} {type(part).__name__:30s} {n / 1e6:6.2f} M parameters")
c = pipe.unet.config
print(f"latents {c.in_channels}x{c.sample_size}x{c.sample_size}, images {RESOLUTION}x{RESOLUTION}x3, "
      f"prompts up to {pipe.tokenizer.model_max_length} tokens")

# %% [markdown]
# ## 2. Sampling, by hand
#
# Start from pure noise in latent space. At each step the UNet predicts the noise twice, with the prompt and
# with an empty prompt; **classifier-free guidance** pushes away from the unconditional prediction:
# `eps = eps_uncond + g * (eps_cond - eps_uncond)`. The scheduler (DDIM here) removes a little of that noise.
# At the end the VAE decodes the latent into pixels.

# %%
from diffusers import DDIMScheduler

tok, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # never clip *latents* to [-1, 1]
scheduler.set_timesteps(SAMPLER_STEPS)

ids = tok([CLASS_PROMPT, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
          return_tensors="pt").input_ids.to(DEVICE)
with torch.no_grad():
    cond, uncond = text_encoder(ids)[0].chunk(2)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(SEEDS[0]))[None].to(DEVICE, DTYPE)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps_cond, eps_uncond = unet(x, t, torch.cat([cond, uncond])).sample.chunk(2)
        eps = eps_uncond + GUIDANCE * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    decoded = vae.decode(latents / vae.config.scaling_factor).sample[0]
by_hand = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

# %% [markdown]
# `dbtutor.sample` does the same through the diffusers pipeline, in seeded batches. Same prompt, seed, steps and scheduler: the same picture.

# %%
import matplotlib.pyplot as plt
import numpy as np

from dbtutor.plots import image_grid

packaged = np.asarray(dbtutor.sample(pipe, CLASS_PROMPT, SEEDS[0], SAMPLER_STEPS, GUIDANCE, scheduler="ddim")[0])
diff = np.abs(by_hand.astype(int) - packaged.astype(int)).max()
print(f"largest pixel difference between the loop above and dbtutor.sample: {diff} (of 255)")
assert diff <= 2
image_grid([by_hand, packaged], col_labels=["by hand", "dbtutor.sample"], scale=2.0)
plt.show()

# %% [markdown]
# Guidance trades variety for prompt-following: with `g = 1` the prompt barely steers the sample, large `g`
# follows the prompt harder. Same seed, four guidance scales:

# %%
images = [dbtutor.sample(pipe, "a photo of a red ball on the grass", SEEDS[0], SAMPLER_STEPS, g)[0]
          for g in GUIDANCES]
image_grid(images, col_labels=[f"guidance {g:g}" for g in GUIDANCES], scale=1.8)
plt.show()

# %% [markdown]
# ## 3. The prior
#
# The **prior** of a class is everything the model generates for the bare class prompt: balls of many colours,
# patterns and places. Adding words narrows it. DreamBooth will teach the model one *specific* ball under a
# new word; the prior-preservation loss exists to keep these rows unchanged while it does.

# %%
from dbtutor.widgets import sample_rows

images = sample_rows(pipe, PRIOR_PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)
image_grid(images, rows=len(PRIOR_PROMPTS), row_labels=PRIOR_PROMPTS, col_labels=[f"seed {s}" for s in SEEDS])
plt.show()

# %%
# The toy world's judge names the object, colour, pattern, scene and "look" of an image; the subject's look
# ("twotone" for the ball) never occurs in the base world, so counting it measures what training changed.
from dbtutor.toyworld.judge import load_judge, predict
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
judge = load_judge(JUDGE_DIR) if LOOK else None      # a real photo subject (dog6) has no judge
print("subject look:", LOOK)

# %% [markdown]
# The prior in numbers: what the judge sees in the samples of the bare class prompt (04 counts more).

# %%
from dbtutor.plots import attribute_bars

if judge is not None:
    prior = images[:len(SEEDS)]                       # the first row: CLASS_PROMPT
    seen = predict(judge, prior)
    attribute_bars(seen, title=f"{CLASS_PROMPT!r}: {len(prior)} samples, as the judge sees them")
    plt.show()
    share = sum(x == LOOK for x in seen["look"]) / len(prior)
    print(f"samples with the subject's look ({LOOK}): {share:.0%} (the base world never shows it: expect 0%)")

# %% [markdown]
# ## 4. Play
#
# Change the prompt, the seed, the guidance scale or the number of steps, then press **sample**. The panel
# calls the same `dbtutor.sample` as above. Try words the world knows (colours, `striped`, `dotted`,
# `checkered`, `box`, `cone`, `star`, `ring`, `heart`, `on the beach`, `at night`) and one it does not (`sks`).

# %%
from dbtutor.widgets import sampler_panel

sampler_panel(pipe, CLASS_PROMPT, seed=SEEDS[0], num=4, guidance=GUIDANCE, steps=SAMPLER_STEPS)

# %% [markdown]
# **Next:** [02 · Instance data and the identifier](02_instance_data_and_identifier.ipynb): the few images of
# our subject, and the word we will teach the model to use for it.
