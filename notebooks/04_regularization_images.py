# %% [markdown]
# # 04 · Regularization images
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# Prior preservation needs examples of the class as the base model draws it: the **regularization** (or
# **class**) images. We generate them once with the base model, from the class prompt without the
# identifier ("a photo of a ball"), and mix them into every training batch.

# %% [markdown]
# ## What you will learn
#
# - how a class image is made (a seeded sample of the class prompt), by hand and with `dbtutor.generate_regularization`
# - NeMo's rule (fill `regularization_dir` until it holds `num_reg_images`), and what dbtutor adds (exact count, atomic files, resumable, the folder remembers its model and prompt)
# - what the class images contain, in pictures and in numbers
# - how many to make, and what they cost

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
NUM_REG_IMAGES = None     # model.data.num_reg_images: class images (toy 200, sd15 50)
# this notebook
EXPLORE_REG_IMAGES = 8    # how many class images the slider panel starts with (it uses its own folder)

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, num_reg_images=NUM_REG_IMAGES)

# %% [markdown]
# ## 1. One class image, by hand
#
# A class image is a sample of the class prompt. `generate_regularization` seeds image number `i` with
# `reg_seed(seed, i)`, so here is image 0, by hand:

# %%
import matplotlib.pyplot as plt
import numpy as np

import dbtutor
from dbtutor.course.plots import image_grid
from dbtutor.regularization import PATTERN, count_images, reg_seed

cfg = dbtutor.load_config(overrides={**C.overrides, "output_dir": str(C.work / "runs" / "unused")})
pipe = C.load_pipeline()
s = cfg.model.sampling
first = dbtutor.sample(pipe, C.class_prompt, reg_seed(C.seed, 0), s.num_inference_steps, s.guidance_scale,
                       scheduler=s.scheduler)[0]

# %% [markdown]
# ## 2. The whole folder, with the package
#
# NeMo's rule: if `regularization_dir` holds fewer than `num_reg_images` images, generate the missing ones
# with `regularization_prompt`, `num_images_per_prompt` at a time; otherwise generate nothing. dbtutor never
# overshoots and writes each file atomically, so an interrupted run resumes with the same images.

# %%
import time

before = count_images(C.reg_dir)
t0 = time.perf_counter()
written = dbtutor.generate_regularization(cfg, pipe)
seconds = time.perf_counter() - t0
print(f"{C.reg_dir} held {before}; generated {len(written)} in {seconds:.1f} s; now {count_images(C.reg_dir)}")
assert count_images(C.reg_dir) >= C.num_reg_images

again = dbtutor.generate_regularization(cfg, pipe)
print(f"second call: generated {len(again)} (the folder is full)")
assert not again

saved = np.asarray(dbtutor.load_image(C.reg_dir / PATTERN.format(0)))
diff = np.abs(saved.astype(int) - np.asarray(first).astype(int)).mean()
print(f"image 0 by hand vs {PATTERN.format(0)}: mean pixel difference {diff:.2f} (batching only)")
assert diff < 2

# %% [markdown]
# NeMo only counts files, so after you swap or retrain the base model (or edit the class prompt) it would train
# against the old class images. The folder here remembers which weights (hashed) and which prompt made its images;
# anything else is refused in one line, before a single image is added:

# %%
import json

from dbtutor.regularization import PROVENANCE

print(json.dumps(json.loads((C.reg_dir / PROVENANCE).read_text()), indent=1))
other = dbtutor.load_config(overrides={**C.overrides, "model.data.regularization_prompt": f"a photo of two {C.class_noun}s",
                                       "output_dir": str(C.work / "runs" / "unused")})
try:
    dbtutor.generate_regularization(other, pipe)
except dbtutor.DataError as e:
    print("refused:", e)
assert count_images(C.reg_dir) == C.num_reg_images       # nothing was added or removed

# %%
paths = sorted(C.reg_dir.glob("class_*.png"))
shown = [dbtutor.load_image(p) for p in paths[:24]]
image_grid(shown, rows=max(1, len(shown) // 8), title=f"{C.class_prompt!r}: {len(shown)} of {len(paths)} class images")
plt.show()

# %% [markdown]
# ## 3. What the class images contain
#
# The course's measuring stick (01): on the toy world the judge reads each image's attributes and whether it shows
# the subject's look (it never should: the base world has no such look); on real photos DINOv2 tells how much each
# class image resembles the subject photos, the level that class drift starts from.

# %%
from dbtutor.course.plots import attribute_bars

M = C.measure()
class_images = [dbtutor.load_image(p) for p in paths]
if M is not None:
    print(f"{len(paths)} class images: {M.share(class_images):.2f} ({M.unit})")
if M is not None and M.kind == "judge":
    from dbtutor.toyworld.judge import predict
    attribute_bars(predict(M.judge, class_images), title=f"{len(paths)} class images, as the judge sees them")
    plt.show()

# %% [markdown]
# This spread of colours, patterns and scenes (or breeds, poses and places) is the prior that training must keep.
# If the class images were all alike, the model could only preserve that one kind of ball.
#
# ## 4. How many?
#
# More class images cover more of the prior, and cost more to generate (once); training cost per step does
# not change. NeMo's example config uses 10; diffusers' DreamBooth documentation uses 200 with 800 steps; the
# paper generates about 1,000. With few images, the prior half of each batch keeps repeating the same examples.
# What they cost on this machine:

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
# on a separate folder (so the training notebooks keep using exactly `num_reg_images`), and shows it. Going
# down generates nothing: a folder that holds enough is left alone.

# %%
from dbtutor.course.widgets import reg_images_panel

reg_images_panel(C.overrides, C.work / "reg" / f"{C.reg_dir.name}-explore", pipe, num=EXPLORE_REG_IMAGES)

# %% [markdown]
# **Next:** [05 · Training with prior preservation](05_training_with_prior_preservation.ipynb).
