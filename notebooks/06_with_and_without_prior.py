# %% [markdown]
# # 06 · With and without prior preservation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/06_with_and_without_prior.ipynb)
#
# Fine-tune on five photos of one ball and the model may start to believe that *every* ball looks like it:
# **language drift** (the class word drifts toward the subject). The prior-preservation loss is the cure.
# Here we train with and without it, and compare the same prompts and seeds side by side.

# %% [markdown]
# ## What you will learn
#
# - language drift: without prior preservation, "a photo of a ball" turns into the subject
# - its cure: with prior preservation, the class keeps its variety while the subject is learned
# - how `prior_loss_weight` trades subject fidelity against class preservation (a sweep)
# - retraining with another weight and steps from a widget, and seeing the result

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
# this notebook: prior_loss_weight values of the sweep (DBTUTOR_NB_SWEEP_WEIGHTS=0,0.3,1);
# λ=0 is the run without prior preservation (see below), λ=PRIOR_LOSS_WEIGHT the run of 05
SWEEP_WEIGHTS = setting("SWEEP_WEIGHTS", [0.0, 0.3, 1.0])
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
import matplotlib.pyplot as plt

from dbtutor.plots import comparison_grid, image_grid, loss_curves, save_figure, sweep_plot
from dbtutor.widgets import judge_scores, run_config, sample_rows, train_run

# %% [markdown]
# ## 1. The base model, before training

# %%
base = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
samples = {"base model": sample_rows(base, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)}
del base

# %% [markdown]
# ## 2. Train without and with prior preservation
#
# The two runs differ in one key, `model.with_prior_preservation`. Everything else (steps, learning rate,
# seed, the text encoder frozen) is the same. `train_run` calls `dbtutor.train` with an output folder
# named after the config: the run with prior preservation is the one 05 made, found and reused if it exists.

# %%
without = dbtutor.train(run_config({**overrides, "model.with_prior_preservation": False}, WORK))
samples["without prior preservation"] = sample_rows(without.pipe, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)
without.pipe = None
with_prior = train_run(overrides, WORK)
samples[f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})"] = sample_rows(with_prior.pipe, PROMPTS, SEEDS,
                                                                             SAMPLER_STEPS, GUIDANCE)
with_prior.pipe = None

# %% [markdown]
# ## 3. Side by side
#
# Same prompts, same seeds, three models. Top row: the subject in a new context. Bottom row: the bare class.
# Look for the bottom row of the middle block: without prior preservation the balls become the two-tone
# subject. With it, they keep the base model's variety.

# %%
fig = comparison_grid(samples, PROMPTS, len(SEEDS), title=f"{MAX_STEPS} steps each; same prompts and seeds")
save_figure(fig, WORK / "figures" / "with_and_without_prior.png")   # closes the figure; shown below
from IPython.display import Image, display
display(Image(filename=str(WORK / "figures" / "with_and_without_prior.png")))

# %%
loss_curves({"without prior preservation": without.history,
             f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})": with_prior.history})
plt.show()

# %% [markdown]
# Without prior preservation there is no prior loss to plot (it is zero). With it, the prior loss tells you
# whether the model still predicts its own class samples.
#
# ## 4. Measuring drift
#
# The judge tells us which samples show the subject's look. First by hand, for the bare class prompt:

# %%
# The toy world's judge names the object, colour, pattern, scene and "look" of an image; the subject's look
# ("twotone" for the ball) never occurs in the base world, so counting it measures what training changed.
from dbtutor.toyworld.judge import load_judge, predict
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
judge = load_judge(JUDGE_DIR) if LOOK else None      # a real photo subject (dog6) has no judge
print("subject look:", LOOK)

# %%
k = len(SEEDS)
if judge is not None:
    for name, images in samples.items():
        looks = predict(judge, images[k:])["look"]                    # the bare-class row
        print(f"{name:32s} {CLASS_PROMPT!r}: {looks.count(LOOK)} of {k} samples look like the subject")
    scores = {name: judge_scores(judge, images[:k], images[k:], LOOK) for name, images in samples.items()}
    for name, s in scores.items():
        assert abs(s["class_drift"] - predict(judge, samples[name][k:])["look"].count(LOOK) / k) < 1e-9
        print(f"{name:32s} subject fidelity {s['subject_fidelity']:.2f}   class drift {s['class_drift']:.2f}")

# %% [markdown]
# ## 5. The `prior_loss_weight` sweep
#
# λ scales the class half of the loss. λ = 0 gives the class half no gradient at all, so it *is* training
# without prior preservation (the same instance draws and updates, up to rounding): we reuse that run. Larger λ holds the class
# more firmly, and can slow down learning the subject.

# %%
sweep = {}
for w in SWEEP_WEIGHTS:
    if w == 0:
        name = "without prior preservation"
    elif w == PRIOR_LOSS_WEIGHT:
        name = f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})"
    else:
        name = f"λ={w:g}"
        run = train_run({**overrides, "model.prior_loss_weight": w}, WORK)
        samples[name] = sample_rows(run.pipe, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)
        del run
    sweep[w] = samples[name]
if judge is not None:
    sweep_scores = [judge_scores(judge, sweep[w][:k], sweep[w][k:], LOOK) for w in SWEEP_WEIGHTS]
    for w, s in zip(SWEEP_WEIGHTS, sweep_scores):
        print(f"λ={w:<4g} subject fidelity {s['subject_fidelity']:.2f}   class preservation {1 - s['class_drift']:.2f}")
    sweep_plot(SWEEP_WEIGHTS, sweep_scores, title=f"{MAX_STEPS} steps, {k} samples per prompt")
    plt.show()

# %% [markdown]
# With few samples per prompt each point is coarse (steps of 1/8); raise `SAMPLES_PER_PROMPT` and add weights
# to `SWEEP_WEIGHTS` for a smoother curve.
#
# ## 6. Play: retrain and redraw
#
# Pick a `prior_loss_weight` and a number of steps, press **retrain and redraw**: the panel calls
# `dbtutor.train` with those overrides (a new output folder per setting; settings already trained are reused)
# and redraws the comparison with the same prompts and seeds. It starts with this notebook's settings.

# %%
from dbtutor.widgets import prior_weight_panel

reference = {"base model": samples["base model"], "without prior preservation": samples["without prior preservation"]}
prior_weight_panel(overrides, WORK, PROMPTS, SEEDS, reference, weight=PRIOR_LOSS_WEIGHT, steps=MAX_STEPS,
                   sampler_steps=SAMPLER_STEPS, guidance=GUIDANCE, judge=judge, look=LOOK)

# %% [markdown]
# **Next:** [07 · Going further](07_going_further.ipynb): the text encoder, LoRA, several GPUs, and Stable
# Diffusion v1.5 with your own photos.
