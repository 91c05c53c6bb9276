# %% [markdown]
# # 02 · Instance data and the identifier
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/02_instance_data_and_identifier.ipynb)
#
# DreamBooth learns a subject from a handful of images (3 to 5) and one prompt,
# `"a photo of [identifier] [class noun]"`. This notebook looks at the images, prepares one by hand, and
# chooses the identifier with the tokenizer.

# %% [markdown]
# ## What you will learn
#
# - what the instance data is and how an image is prepared for training (resize, crop, scale to [-1, 1])
# - why the prompt pairs a **rare token** with the **class noun**, and how the tokenizer splits candidate identifiers
# - whether the text encoder *reads* the identifier: how far it moves the output, next to a colour word, before and after DreamBooth
# - how a training batch is laid out: instance examples first, class examples second

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
# this notebook: identifiers to try (a good one is a single, rarely used token)
CANDIDATES = ["sks", "ohwx", "zwx", "xyz", "dbtutor", "mybestball", "red", "ball"]
BATCH_CLASS_IMAGES = 4     # class images made here to show a batch (04 makes the rest, the same ones)
# device and dtype, picked automatically
DEVICE = dbtutor.pick_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
PRECISION = "16" if DEVICE.type == "cuda" else "32"               # trainer.precision
print(f"base model {PRETRAINED} on {DEVICE} ({DTYPE}); results in {WORK}")

# %% [markdown]
# ## 1. The subject

# %%
import json

import matplotlib.pyplot as plt

from dbtutor.plots import image_grid

paths = dbtutor.scan_images(SUBJECT_DIR)
images = [dbtutor.load_image(p) for p in paths]
if (SUBJECT_DIR / "subject.json").exists():
    print(json.dumps(json.loads((SUBJECT_DIR / "subject.json").read_text()), indent=1))
image_grid(images, col_labels=[f"{p.name} {im.size[0]}x{im.size[1]}" for p, im in zip(paths, images)], scale=1.8,
           title=f"{len(images)} instance images: {INSTANCE_PROMPT!r}")
plt.show()

# %% [markdown]
# Good instance images show the same subject in **varied** settings (backgrounds, positions, sizes, light):
# what stays the same across them is what the identifier will mean; what varies is left to the prompt.
#
# ## 2. Preparing an image, by hand
#
# The model sees a square of `RESOLUTION` pixels with values in [-1, 1]: resize the short side, crop the
# centre, rescale.

# %%
import numpy as np
from PIL import Image

im = images[0]
s = RESOLUTION / min(im.size)
resized = im.resize((max(RESOLUTION, round(im.size[0] * s)), max(RESOLUTION, round(im.size[1] * s))),
                    Image.BICUBIC)
left, top = (resized.size[0] - RESOLUTION) // 2, (resized.size[1] - RESOLUTION) // 2
crop = resized.crop((left, top, left + RESOLUTION, top + RESOLUTION))
by_hand = torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1

packaged = dbtutor.preprocess(im, RESOLUTION, center_crop=True)
print(tuple(packaged.shape), f"values in [{packaged.min():.2f}, {packaged.max():.2f}]")
assert torch.allclose(by_hand, packaged), "by hand and dbtutor.preprocess disagree"
print("by hand == dbtutor.preprocess")

# %% [markdown]
# ## 3. The identifier
#
# The instance prompt needs a word for *this* ball. A common word (`red`) already means something and would be
# overwritten; a made-up string (`mybestball`) is cut into familiar pieces (`my`, `best`, `ball`) that also
# mean something. The DreamBooth paper picks a **rare token**: one token of the vocabulary that the model has
# hardly ever seen, such as `sks`. The **class noun** (`ball`) stays in the prompt so the subject can borrow
# everything the model knows about balls (shape, how they sit in a scene), and it names the class whose
# prior we will preserve.

# %%
from transformers import CLIPTokenizer

from dbtutor.widgets import identifier_report

tokenizer = CLIPTokenizer.from_pretrained(str(PRETRAINED), subfolder="tokenizer")
print(f"by hand: {INSTANCE_PROMPT!r} -> {tokenizer.tokenize(INSTANCE_PROMPT)}")
print(f"{'candidate':12s} {'tokens':32s} pieces")
for c in CANDIDATES:
    r = identifier_report(tokenizer, c, CLASS_NOUN)
    print(f"{c:12s} {' '.join(t for t, _ in r['identifier_tokens']):32s} {len(r['identifier_tokens'])}")
assert len(identifier_report(tokenizer, IDENTIFIER, CLASS_NOUN)["identifier_tokens"]) == 1

# %% [markdown]
# (`</w>` marks the end of a word.) Single tokens are not all equally good: `red` and `ball` are single tokens
# too, but frequent ones.
#
# A rare token is only useful if the text encoder **reads** it: the UNet sees the prompt only through the text
# encoder's output, so a word that leaves that output where it was cannot select anything, however long we
# train. Stable Diffusion's CLIP has read rare words and names on the web ("a photo of a fiat car"), so it
# passes them on. The toy model's captions are mostly attribute words ("a photo of a red striped ball"), but
# some call an object by a rare **name** that stands for one fixed colour and pattern ("a photo of quan ball"),
# as web captions call things by brand and proper names (`dbtutor/toyworld/names.py`; `sks` and `ohwx` are never
# names). How far does a word move the output? By hand, the relative distance between the two prompts'
# text-encoder outputs over every token position, then `dbtutor.text_shift`, which does the same:

# %%
from dbtutor.toyworld.names import world_names
from dbtutor.widgets import sample_rows

pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
NAME, (name_colour, name_pattern) = sorted(world_names(pipe.tokenizer).items())[0]
SHIFT_PROMPTS = {"the identifier": INSTANCE_PROMPT, "a colour word": f"a photo of a red {CLASS_NOUN}",
                 f"a name ({NAME} = {name_colour} {name_pattern})": f"a photo of {NAME} {CLASS_NOUN}"}

ids = pipe.tokenizer([CLASS_PROMPT, INSTANCE_PROMPT], padding="max_length", truncation=True,
                     max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(DEVICE)
with torch.no_grad():
    out = pipe.text_encoder(ids)[0].float()             # (2 prompts, positions, width): what the UNet reads
by_hand = ((out[1] - out[0]).norm() / out[0].norm()).item()
shift_before = dict(zip(SHIFT_PROMPTS, dbtutor.text_shift(pipe, CLASS_PROMPT, list(SHIFT_PROMPTS.values()))))
assert abs(by_hand - shift_before["the identifier"]) < 1e-4
print(f"moved away from {CLASS_PROMPT!r} by")
for what, prompt in SHIFT_PROMPTS.items():
    print(f"  {prompt!r:34s} {shift_before[what]:.3f}   ({what})")

# %% [markdown]
# Same seeds, both prompts: what `sks` does to the picture before any DreamBooth.

# %%
before = sample_rows(pipe, [INSTANCE_PROMPT, CLASS_PROMPT], SEEDS, SAMPLER_STEPS, GUIDANCE)
image_grid(before, rows=2, row_labels=[INSTANCE_PROMPT, CLASS_PROMPT], title="the base model, before DreamBooth")
plt.show()

# %% [markdown]
# `sks` is none of the world's names: it moves the output less than a colour word or a name does, but far
# from nothing, and the pictures show what the base model makes of a word it has never seen (Stable
# Diffusion, too, has its own idea of `sks`). DreamBooth's job (05) is to give it one meaning: the subject.
# Section 5 measures the same distances after training.

# %% [markdown]
# ## 4. A training batch
#
# With prior preservation every step sees instance images with the instance prompt **and** class images
# (made by the base model, see 04) with the class prompt. `dbtutor.collate` stacks the instance examples
# first and the class examples second, so that `torch.chunk(prediction, 2)` splits the batch into the two
# halves of the loss (see 05). We make a few class images here to look at one batch.

# %%
cfg = dbtutor.load_config(overrides={
    "model.pretrained": str(PRETRAINED), "model.data.regularization_dir": str(REG_DIR),
    "model.data.regularization_prompt": CLASS_PROMPT, "model.data.num_reg_images": BATCH_CLASS_IMAGES,
    "model.sampling.num_inference_steps": SAMPLER_STEPS, "model.sampling.guidance_scale": GUIDANCE,
    "trainer.seed": SEED, "output_dir": str(WORK / "runs" / "unused")})
dbtutor.generate_regularization(cfg, pipe)   # fills REG_DIR up to BATCH_CLASS_IMAGES (no-op if 04 ran)

ds = dbtutor.DreamBoothDataset(SUBJECT_DIR, INSTANCE_PROMPT, RESOLUTION, True,
                               regularization_dir=REG_DIR, regularization_prompt=CLASS_PROMPT)
batch = dbtutor.collate([ds[0], ds[1]])
print("pixel_values", tuple(batch["pixel_values"].shape))
for i, p in enumerate(batch["prompts"]):
    print(i, p)
assert batch["prompts"] == [INSTANCE_PROMPT] * 2 + [CLASS_PROMPT] * 2
pics = ((batch["pixel_values"] + 1) * 127.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
image_grid(list(pics), col_labels=batch["prompts"], scale=1.8, title="one batch: instance half, class half")
plt.show()

# %% [markdown]
# ## 5. After DreamBooth: the identifier means the subject
#
# We borrow the training run of 05 (the same settings: `MAX_STEPS` steps with prior preservation, the text
# encoder frozen as in diffusers' and NeMo's defaults; 05 explains every part of it). Whichever notebook runs
# first trains it; the other finds the finished run in `WORK`. Then the same distances and the same seeds as above:

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
from dbtutor.widgets import train_run

del pipe
run = train_run(overrides, WORK)
shift_after = dict(zip(SHIFT_PROMPTS, dbtutor.text_shift(run.pipe, CLASS_PROMPT, list(SHIFT_PROMPTS.values()))))
print(f"moved away from {CLASS_PROMPT!r} by        before   after")
for what, prompt in SHIFT_PROMPTS.items():
    print(f"  {prompt!r:34s} {shift_before[what]:.3f}    {shift_after[what]:.3f}   ({what})")
if not TRAIN_TEXT_ENCODER:                   # a frozen text encoder: the UNet reads exactly what it read before
    assert all(abs(shift_after[k] - shift_before[k]) < 1e-5 for k in SHIFT_PROMPTS)
after = sample_rows(run.pipe, [INSTANCE_PROMPT, CLASS_PROMPT], SEEDS, SAMPLER_STEPS, GUIDANCE)
image_grid(before + after, rows=4, row_labels=[f"before: {INSTANCE_PROMPT}", f"before: {CLASS_PROMPT}",
                                                f"after: {INSTANCE_PROMPT}", f"after: {CLASS_PROMPT}"],
           title=f"the same seeds before and after {MAX_STEPS} DreamBooth steps")
plt.show()

# %% [markdown]
# The distances did not move: the text encoder is frozen, so `sks ball` reaches the UNet as the very vector it
# was before, about as far from `a ball` as a name and half as far as a colour word. What changed is the UNet: it
# learned what that vector should draw. `sks ball` now draws the two-tone subject, and `a ball` stays any ball,
# because prior preservation kept the UNet's answer to the class prompt. This works only because the base model's
# text encoder reads rare words at all: on this project's earlier base model (trained on attribute words only)
# `sks` moved the output by 0.012, and "sks ball" and "a ball" drew the same picture for every seed, before and
# after DreamBooth. 07 shows what training the text encoder as well does to these distances.
#
# ## 6. Play
#
# Type an identifier and a class noun: the panel shows how the tokenizer splits them and the two prompts
# training would use.

# %%
from dbtutor.widgets import identifier_panel

identifier_panel(tokenizer, IDENTIFIER, CLASS_NOUN)

# %% [markdown]
# **Next:** [03 · The latent cache](03_latent_cache.ipynb): training happens on VAE latents, not pixels.
