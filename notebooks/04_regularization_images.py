# %% [markdown]
# # 04 · Regularization images
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/04_regularization_images.ipynb)
#
# Prior preservation needs examples of the class *as the base model draws it*: the regularization (class)
# images. They are generated once, before training, from the class prompt; during training the model must
# keep predicting their noise as it did, while it learns the subject.

# %% [markdown]
# ## What you will learn
#
# - what class images are and how `dbtutor.generate_regularization` makes them (NeMo's contract: only what is missing, up to `num_reg_images`)
# - that each class image depends only on its index and the seed, so a folder can be filled in pieces
# - what they contain: the class prior, counted by the judge
# - how many to make and what they cost (a `num_reg_images` slider)

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
# this notebook: how many class images the slider panel starts with (it uses its own folder)
EXPLORE_REG_IMAGES = setting("EXPLORE_REG_IMAGES", 8)
# device and dtype, picked automatically
DEVICE = dbtutor.pick_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
PRECISION = "16" if DEVICE.type == "cuda" else "32"               # trainer.precision
print(f"base model {PRETRAINED} on {DEVICE} ({DTYPE}); results in {WORK}")

# %%
overrides = {
    "model.pretrained": str(PRETRAINED),
    "model.data.instance_dir": str(SUBJECT_DIR),
    "model.data.instance_prompt": INSTANCE_PROMPT,
    "model.data.regularization_dir": str(REG_DIR),
    "model.data.regularization_prompt": CLASS_PROMPT,
    "model.data.num_reg_images": NUM_REG_IMAGES,
    "model.data.resolution": RESOLUTION,
    "model.with_prior_preservation": True,
    "model.prior_loss_weight": PRIOR_LOSS_WEIGHT,
    "model.train_text_encoder": TRAIN_TEXT_ENCODER,
    "model.sampling.num_inference_steps": SAMPLER_STEPS,
    "model.sampling.guidance_scale": GUIDANCE,
    "optim.lr": LR,
    "trainer.max_steps": MAX_STEPS,
    "trainer.seed": SEED,
    "trainer.precision": PRECISION,
    "trainer.device": DEVICE.type,
    "trainer.checkpoint_every": 0,
}

cfg = dbtutor.load_config(overrides={**overrides, "output_dir": str(WORK / "runs" / "unused")})

# %% [markdown]
# ## 1. One class image, by hand
#
# A class image is a sample of the class prompt. `generate_regularization` seeds image number `i` with
# `reg_seed(seed, i)`, so here is image 0, by hand:

# %%
import matplotlib.pyplot as plt
import numpy as np

from dbtutor.plots import image_grid
from dbtutor.regularization import PATTERN, count_images, reg_seed

pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
s = cfg.model.sampling
first = dbtutor.sample(pipe, CLASS_PROMPT, reg_seed(SEED, 0), s.num_inference_steps, s.guidance_scale,
                       scheduler=s.scheduler)[0]

# %% [markdown]
# ## 2. The whole folder, with the package
#
# NeMo's rule: if `regularization_dir` holds fewer than `num_reg_images` images, generate the missing ones
# with `regularization_prompt`, `num_images_per_prompt` at a time; otherwise generate nothing. dbtutor never
# overshoots and writes each file atomically, so an interrupted run resumes with the same images.

# %%
import time

before = count_images(REG_DIR)
t0 = time.perf_counter()
written = dbtutor.generate_regularization(cfg, pipe)
seconds = time.perf_counter() - t0
print(f"{REG_DIR} held {before}; generated {len(written)} in {seconds:.1f} s; now {count_images(REG_DIR)}")
assert count_images(REG_DIR) >= NUM_REG_IMAGES

again = dbtutor.generate_regularization(cfg, pipe)
print(f"second call: generated {len(again)} (the folder is full)")
assert not again

saved = np.asarray(dbtutor.load_image(REG_DIR / PATTERN.format(0)))
diff = np.abs(saved.astype(int) - np.asarray(first).astype(int)).mean()
print(f"image 0 by hand vs {PATTERN.format(0)}: mean pixel difference {diff:.2f} (batching only)")
assert diff < 2

# %%
paths = sorted(REG_DIR.glob("class_*.png"))
shown = [dbtutor.load_image(p) for p in paths[:24]]
image_grid(shown, rows=max(1, len(shown) // 8), title=f"{CLASS_PROMPT!r}: {len(shown)} of {len(paths)} class images")
plt.show()

# %% [markdown]
# ## 3. What the class images contain

# %%
# The toy world's judge names the object, colour, pattern, scene and "look" of an image; the subject's look
# ("twotone" for the ball) never occurs in the base world, so counting it measures what training changed.
from dbtutor.toyworld.judge import load_judge, predict
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
judge = load_judge(JUDGE_DIR) if LOOK else None      # a real photo subject (dog6) has no judge
print("subject look:", LOOK)

# %%
from dbtutor.plots import attribute_bars

if judge is not None:
    seen = predict(judge, [dbtutor.load_image(p) for p in paths])
    attribute_bars(seen, title=f"{len(paths)} class images, as the judge sees them")
    plt.show()
    print(f"with the subject's look: {sum(x == LOOK for x in seen['look'])} of {len(paths)}")

# %% [markdown]
# This spread of colours, patterns and scenes is the prior that training must keep. If the class images were
# all alike, the model could only preserve that one kind of ball.
#
# ## 4. How many?
#
# More class images cover more of the prior, and cost more to generate (once); training cost per step does
# not change. NeMo's example config uses 10; diffusers' DreamBooth script defaults to 100. With few images, the
# prior half of each batch keeps repeating the same examples. What they cost on this machine:

# %%
per_image = seconds / max(len(written), 1) if written else None
if per_image:
    for n in (10, 50, 100, 200, 1000):
        print(f"{n:5d} class images: {n * per_image / 60:5.1f} min")
else:
    print("the folder was already full (made by an earlier run): nothing was timed")

# %% [markdown]
# ## 5. Play
#
# Move the slider and press the button: the panel calls `generate_regularization` with that `num_reg_images`
# on a separate folder (so the training notebooks keep using exactly `NUM_REG_IMAGES`), and shows it. Going
# down generates nothing: a folder that holds enough is left alone.

# %%
from dbtutor.widgets import reg_images_panel

reg_images_panel(overrides, WORK / "reg" / f"{REG_DIR.name}-explore", pipe, num=EXPLORE_REG_IMAGES)

# %% [markdown]
# **Next:** [05 · Training with prior preservation](05_training_with_prior_preservation.ipynb).
