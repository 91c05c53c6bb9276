# %% [markdown]
# # 06 · With and without prior preservation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# The point of the prior-preservation loss is to stop **language drift**: fine-tuned on "a photo of sks ball"
# alone, the model starts to draw the subject for *every* ball. Here we train the same subject twice, with and
# without the class half of the loss, and compare what each model draws for the same prompts and seeds.

# %% [markdown]
# ## What you will learn
#
# - what language drift looks like: the bare class prompt taken over by the subject
# - that the prior-preservation loss prevents it, at the same number of steps and learning rate
# - when drift sets in: the class prompt's samples over the training steps, without and with prior preservation
# - how `prior_loss_weight` (λ) trades subject fidelity against keeping the class, measured
# - a panel to retrain with another λ and see the result next to the others

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
PRIOR_LOSS_WEIGHT = None  # model.prior_loss_weight, λ (toy 1.0, sd15 1.0)
# this notebook
SAMPLES_PER_PROMPT = None # images per prompt (toy 8, sd15 4)
SWEEP_WEIGHTS = [0.0, 0.3, 1.0]   # λ values of the sweep: 0 is the run without prior preservation

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, max_steps=MAX_STEPS,
                 prior_loss_weight=PRIOR_LOSS_WEIGHT, samples_per_prompt=SAMPLES_PER_PROMPT)

# %%
import matplotlib.pyplot as plt

import dbtutor
from dbtutor.course.plots import comparison_grid, loss_curves, save_figure, sweep_plot

# %% [markdown]
# ## 1. The base model, before training

# %%
base = C.load_pipeline()
samples = {"base model": C.sample_rows(base, C.prompts)}
del base
course.free_memory()

# %% [markdown]
# ## 2. Train without and with prior preservation
#
# The two runs differ in one key, `model.with_prior_preservation`. Everything else (steps, learning rate,
# seed, the text encoder frozen) is the same. `C.train` calls `dbtutor.train` with an output folder
# named after the config: the run with prior preservation is the one 05 made, found and reused if it exists.

# %%
WITH = f"with prior preservation (λ={C.prior_loss_weight:g})"
without = C.train({"model.with_prior_preservation": False})
samples["without prior preservation"] = C.sample_rows(C.ready(without.pipe), C.prompts)
without.pipe = None
with_prior = C.train()
samples[WITH] = C.sample_rows(C.ready(with_prior.pipe), C.prompts)
with_prior.pipe = None
course.free_memory()

# %% [markdown]
# ## 3. Side by side
#
# Same prompts, same seeds, three models. Top row: the subject in a new context. Bottom row: the bare class.
# Look for the bottom row of the middle block: without prior preservation the class samples become the
# subject. With it, they keep the base model's variety.

# %%
fig = comparison_grid(samples, C.prompts, len(C.seeds), title=f"{C.max_steps} steps each; same prompts and seeds")
save_figure(fig, C.work / "figures" / "with_and_without_prior.png")   # closes the figure; shown below
from IPython.display import Image, display
display(Image(filename=str(C.work / "figures" / "with_and_without_prior.png")))

# %%
loss_curves({"without prior preservation": without.history, WITH: with_prior.history})
plt.show()

# %% [markdown]
# Without prior preservation there is no prior loss to plot (it is zero). With it, the prior loss tells you
# whether the model still predicts its own class samples.
#
# ## 4. Measuring drift
#
# The course's measuring stick (01) on each model's two rows: subject fidelity of the subject row, and class drift
# of the class row (judge: the share of class samples showing the subject's look; DINOv2: their similarity to the
# subject photos, read against the base model's). By hand for the class row first, then `M.scores`:

# %%
from dbtutor.measuring.measure import report

M = C.measure()
k = len(C.seeds)
if M is not None:
    for name, images in samples.items():
        print(f"{name:34s} {C.class_prompt!r}: {M.share(images[k:]):.2f} ({M.unit})")
    scores = {name: M.scores(images[:k], images[k:]) for name, images in samples.items()}
    for name, s in scores.items():
        assert abs(s["class_drift"] - M.share(samples[name][k:])) < 1e-6
        print(report(name, s))

# %% [markdown]
# ## 5. Drift, step by step
#
# Each run sampled the same prompts at the same seeds every `validation_every` steps while it trained (step 0 is
# the base model). The bare class prompt over the steps, without prior preservation (top) and with it (bottom):

# %%
from dbtutor.course.plots import validation_curves, validation_strips
from dbtutor.runs.validation import load_validations

runs = {"without prior preservation": load_validations(without.output_dir), WITH: load_validations(with_prior.output_dir)}
save_figure(validation_strips(runs, prompt=C.class_prompt), C.work / "figures" / "drift_over_steps.png")
display(Image(filename=str(C.work / "figures" / "drift_over_steps.png")))

# %% [markdown]
# The same validations measured (judge: share of samples showing the subject's look; DINOv2: similarity to the
# subject photos), the subject prompt (solid) and the class prompt (dashed) per run, and the first step at which
# each run's class samples moved toward the subject, and the first at which they came halfway from where the base
# model was to where the subject prompt ends:

# %%
r = runs["without prior preservation"]
metric = {"judge": "look_share", "clip": "dino"}.get(r.scorer)
if metric:
    validation_curves(runs, metric=metric)
    plt.show()
    for name, run in runs.items():
        cls, inst = run.shares(run.class_prompt, metric), run.shares(run.instance_prompt, metric)
        moved = [s for s, v in zip(run.steps, cls) if v > cls[0] + 0.1 * (inst[-1] - cls[0])]
        half = [s for s, v in zip(run.steps, cls) if v >= cls[0] + 0.5 * (inst[-1] - cls[0]) and s > 0]
        print(f"{name:34s} class prompt {cls[0]:.2f} at step 0, {cls[-1]:.2f} at step {run.steps[-1]}; "
              + (f"moves toward the subject from step {moved[0]}" if moved else "never moves toward the subject")
              + (f", halfway from step {half[0]}" if half else ""))
else:
    print("these validations have no scores (no judge, and no CLIP/DINOv2 on this machine): the strips above")

# %% [markdown]
# Without prior preservation the class prompt starts to follow the subject prompt within the first validations (on
# the toy world: some "a ball" samples take the two-tone look, and the rest collapse toward the subject's colours)
# and by the end draws the subject. With it, the class prompt's samples keep changing from step to step, as any
# fine-tuned model's do, but they do not move toward the subject. That is what the class half of the loss buys.
#
# %% [markdown]
# ## 6. The `prior_loss_weight` sweep
#
# λ scales the class half of the loss. λ = 0 gives the class half no gradient at all, so it *is* training
# without prior preservation (the same instance draws and updates, up to rounding): we reuse that run. Larger λ
# holds the class more firmly, and can slow down learning the subject.

# %%
sweep = {}
for w in SWEEP_WEIGHTS:
    if w == 0:
        name = "without prior preservation"
    elif w == C.prior_loss_weight:
        name = WITH
    else:
        name = f"λ={w:g}"
        run = C.train({"model.prior_loss_weight": w})
        samples[name] = C.sample_rows(C.ready(run.pipe), C.prompts)
        del run
        course.free_memory()
    sweep[w] = samples[name]
if M is not None:
    sweep_scores = [M.scores(sweep[w][:k], sweep[w][k:]) for w in SWEEP_WEIGHTS]
    for w, s in zip(SWEEP_WEIGHTS, sweep_scores):
        print(report(f"λ={w:g}", s))
    sweep_plot(SWEEP_WEIGHTS, sweep_scores, title=f"{C.max_steps} steps, {k} samples per prompt", unit=M.unit)
    plt.show()

# %% [markdown]
# With few samples per prompt each point is coarse (judge: steps of 1/8 at 8 samples); raise `SAMPLES_PER_PROMPT`
# and add weights to `SWEEP_WEIGHTS` for a smoother curve.
#
# ## 7. Play: retrain and redraw
#
# Pick a `prior_loss_weight` and a number of steps, press **retrain and redraw**: the panel calls
# `dbtutor.train` with those overrides (a new output folder per setting; settings already trained are reused)
# and redraws the comparison with the same prompts and seeds. It starts with this notebook's settings.

# %%
from dbtutor.course.widgets import prior_weight_panel

reference = {"base model": samples["base model"], "without prior preservation": samples["without prior preservation"]}
prior_weight_panel(C.overrides, C.work, C.prompts, C.seeds, reference, weight=C.prior_loss_weight,
                   steps=C.max_steps, sampler_steps=C.sampler_steps, guidance=C.guidance, measure=M,
                   scheduler=C.scheduler, batch_size=C.sample_batch, prepare=C.ready)

# %% [markdown]
# **Next:** [07 · Going further](07_going_further.ipynb): the text encoder, LoRA, several GPUs, and Stable
# Diffusion v1.5 with your own photos.
