# %% [markdown]
# # 02 · Instance data and the identifier
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# DreamBooth needs only a handful of images of the subject: the **instance images**. It binds them to a
# prompt that contains a rare **identifier** plus the subject's class noun: "a photo of sks ball" on the toy world,
# "a photo of sks dog" for the DreamBooth paper's dog. This notebook
# looks at the images, prepares them by hand, and chooses the identifier.

# %% [markdown]
# ## What you will learn
#
# - what makes good instance images, and how they are prepared (resize, centre crop, scale to [-1, 1]), by hand and with `dbtutor.preprocess`
# - why the identifier should be a single rare token, and how the CLIP tokenizer splits candidates
# - whether the text encoder reads the identifier at all (`dbtutor.text_shift`), before and after DreamBooth
# - what one training batch holds: instance examples first, class examples second

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
SAMPLES_PER_PROMPT = None # images per prompt in the grids (toy 8, sd15 4)
CANDIDATES = ["sks", "ohwx", "zwx", "xyz", "dbtutor"]   # identifiers to try (section 3 adds 3 from the class noun)
BATCH_CLASS_IMAGES = 4    # class images made here to show one batch (04 makes the rest, the same ones)

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, max_steps=MAX_STEPS,
                 samples_per_prompt=SAMPLES_PER_PROMPT)

# %% [markdown]
# ## 1. The subject

# %%
import json

import matplotlib.pyplot as plt
import torch

import dbtutor
from dbtutor.course.plots import image_grid

paths = dbtutor.scan_images(C.subject_dir)
images = [dbtutor.load_image(p) for p in paths]
if (C.subject_dir / "subject.json").exists():
    print(json.dumps(json.loads((C.subject_dir / "subject.json").read_text()), indent=1))
image_grid(images, col_labels=[f"{p.name} {im.size[0]}x{im.size[1]}" for p, im in zip(paths, images)], scale=1.8,
           title=f"{len(images)} instance images: {C.instance_prompt!r}")
plt.show()

# %% [markdown]
# Good instance images show the same subject in **varied** settings (backgrounds, positions, sizes, light):
# what stays the same across them is what the identifier will mean; what varies is left to the prompt.
#
# ## 2. Preparing an image, by hand
#
# The model sees a square of `resolution` pixels with values in [-1, 1]: take the largest square in the middle
# of the photo, resample it to `resolution` pixels a side, rescale the values. (Only the square is resampled, so
# a wide or tall phone photo works the same way.)

# %%
import numpy as np
from PIL import Image

R = C.resolution
for im in images:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = im.resize((R, R), Image.BICUBIC, box=(left, top, left + side, top + side))   # crop + resample
    by_hand = torch.from_numpy(np.asarray(square, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
    packaged = dbtutor.preprocess(im, R, center_crop=True)
    assert torch.allclose(by_hand, packaged), "by hand and dbtutor.preprocess disagree"
print(tuple(packaged.shape), f"values in [{packaged.min():.2f}, {packaged.max():.2f}]")
print(f"by hand == dbtutor.preprocess, for all {len(images)} photos")

# %% [markdown]
# ## 3. The identifier
#
# The instance prompt needs a word for *this* subject. A common word (a colour, or the class noun itself) already
# means something and would be overwritten; a made-up string (`mybest` and the class noun) is cut into familiar
# pieces (`my`, `best`, the noun) that also mean something. The DreamBooth paper picks a **rare token**: one
# token of the vocabulary that the model has hardly ever seen, such as `sks`. The **class noun** stays in the
# prompt so the subject can borrow everything the model knows about its class (shape, how it sits in a scene),
# and it names the class whose prior we will preserve.

# %%
from dbtutor.course import identifier_report

pipe = C.load_pipeline()
tokenizer = pipe.tokenizer
print(f"by hand: {C.instance_prompt!r} -> {tokenizer.tokenize(C.instance_prompt)}")
candidates = CANDIDATES + [f"mybest{C.class_noun}", C.colour, C.class_noun]   # made up, a colour, the noun
print(f"{'candidate':16s} {'tokens':32s} pieces")
for c in candidates:
    r = identifier_report(tokenizer, c, C.class_noun)
    print(f"{c:16s} {' '.join(t for t, _ in r['identifier_tokens']):32s} {len(r['identifier_tokens'])}")
assert len(identifier_report(tokenizer, C.identifier, C.class_noun)["identifier_tokens"]) == 1

# %% [markdown]
# (`</w>` marks the end of a word.) Single tokens are not all equally good: the colour word and (for most class
# nouns) the noun are single tokens too, but frequent ones.
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
SHIFT_PROMPTS = {"the identifier": C.instance_prompt, "a colour word": f"a photo of a {C.colour} {C.class_noun}",
                 "another rare token": f"a photo of ohwx {C.class_noun}"}
if C.profile == "toy" and C.class_noun == "ball":      # one of the toy world's names, for comparison
    from dbtutor.toyworld.names import world_names
    NAME, (name_colour, name_pattern) = sorted(world_names(tokenizer).items())[0]
    SHIFT_PROMPTS[f"a name ({NAME} = {name_colour} {name_pattern})"] = f"a photo of {NAME} {C.class_noun}"

ids = tokenizer([C.class_prompt, C.instance_prompt], padding="max_length", truncation=True,
                max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(C.device)
with torch.no_grad():
    out = pipe.text_encoder(ids)[0].float()             # (2 prompts, positions, width): what the UNet reads
by_hand = ((out[1] - out[0]).norm() / out[0].norm()).item()
shift_before = dict(zip(SHIFT_PROMPTS, dbtutor.text_shift(pipe, C.class_prompt, list(SHIFT_PROMPTS.values()))))
assert abs(by_hand - shift_before["the identifier"]) < 1e-3
print(f"moved away from {C.class_prompt!r} by")
for what, prompt in SHIFT_PROMPTS.items():
    print(f"  {prompt!r:34s} {shift_before[what]:.3f}   ({what})")

# %% [markdown]
# Same seeds, both prompts: what the identifier does to the picture before any DreamBooth.

# %%
before = C.sample_rows(pipe, [C.instance_prompt, C.class_prompt])
image_grid(before, rows=2, row_labels=[C.instance_prompt, C.class_prompt], title="the base model, before DreamBooth")
plt.show()

# %% [markdown]
# On the toy world `sks` is none of the world's names: it moves the output less than a colour word or a name does,
# but far from nothing, and the pictures show what the base model makes of a word it has never seen (Stable
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
cfg = dbtutor.load_config(overrides={**C.overrides, "model.data.num_reg_images": BATCH_CLASS_IMAGES,
                                     "output_dir": str(C.work / "runs" / "unused")})
dbtutor.generate_regularization(cfg, pipe)   # fills the class folder up to BATCH_CLASS_IMAGES (no-op if 04 ran)

ds = dbtutor.DreamBoothDataset(C.subject_dir, C.instance_prompt, C.resolution, True,
                               regularization_dir=C.reg_dir, regularization_prompt=C.class_prompt)
batch = dbtutor.collate([ds[0], ds[1]])
print("pixel_values", tuple(batch["pixel_values"].shape))
for i, p in enumerate(batch["prompts"]):
    print(i, p)
assert batch["prompts"] == [C.instance_prompt] * 2 + [C.class_prompt] * 2
pics = ((batch["pixel_values"] + 1) * 127.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
image_grid(list(pics), col_labels=batch["prompts"], scale=1.8, title="one batch: instance half, class half")
plt.show()

# %% [markdown]
# ## 5. After DreamBooth: the identifier means the subject
#
# We borrow the training run of 05 (the same settings: `max_steps` steps with prior preservation, the text
# encoder frozen as in diffusers' and NeMo's defaults; 05 explains every part of it). Whichever notebook runs
# first trains it; the other finds the finished run in `WORK`. Then the same distances and the same seeds as above:

# %%
del pipe
course.free_memory()
run = C.train()
after_pipe = C.ready(run.pipe)                   # the trained model, on this device, in the sampling dtype
shift_after = dict(zip(SHIFT_PROMPTS, dbtutor.text_shift(after_pipe, C.class_prompt, list(SHIFT_PROMPTS.values()))))
print(f"moved away from {C.class_prompt!r} by        before   after")
for what, prompt in SHIFT_PROMPTS.items():
    print(f"  {prompt!r:34s} {shift_before[what]:.3f}    {shift_after[what]:.3f}   ({what})")
if not C.train_text_encoder:                 # a frozen text encoder: the UNet reads what it read before
    assert all(abs(shift_after[k] - shift_before[k]) < 1e-3 for k in SHIFT_PROMPTS)
after = C.sample_rows(after_pipe, [C.instance_prompt, C.class_prompt])
image_grid(before + after, rows=4, row_labels=[f"before: {C.instance_prompt}", f"before: {C.class_prompt}",
                                                f"after: {C.instance_prompt}", f"after: {C.class_prompt}"],
           title=f"the same seeds before and after {C.max_steps} DreamBooth steps")
plt.show()

# %% [markdown]
# The distances did not move: the text encoder is frozen, so the identifier reaches the UNet as the very vector it
# was before. What changed is the UNet: it learned what that vector should draw. The instance prompt now draws the
# subject, and the class prompt stays any member of the class, because prior preservation kept the UNet's answer
# to the class prompt. This works only because the base model's text encoder reads rare words at all: a toy model
# trained on attribute words alone moved its output by about 0.01 for `sks`, and then "sks ball" and "a ball" drew
# the same picture for every seed, before and after DreamBooth. 07 shows what training the text encoder as well
# does to these distances.
#
# ## 6. Play
#
# Type an identifier and a class noun: the panel shows how the tokenizer splits them and the two prompts
# training would use.

# %%
from dbtutor.course.widgets import identifier_panel

identifier_panel(tokenizer, C.identifier, C.class_noun)

# %% [markdown]
# **Next:** [03 · The latent cache](03_latent_cache.ipynb): training happens on VAE latents, not pixels.
