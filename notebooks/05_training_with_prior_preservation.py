# %% [markdown]
# # 05 · Training with prior preservation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/05_training_with_prior_preservation.ipynb)
#
# Now we teach the model the subject. Each step puts the instance images and the class images through the
# model together; the loss is the usual noise-prediction error on the instance half **plus**
# `prior_loss_weight` times the same error on the class half.

# %% [markdown]
# ## What you will learn
#
# - one training step by hand: latents, noise, timesteps, text embeddings, the UNet's prediction
# - the prior-preservation loss written with `torch.chunk` and `F.mse_loss`, checked against `dbtutor.dreambooth_loss` (NeMo's formula)
# - training with `dbtutor.train`, and reading the instance and prior loss curves
# - what the trained model draws for the subject and for the bare class

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
# this notebook: nothing more; the training settings are above
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
from dbtutor.widgets import run_config

cfg = run_config(overrides, WORK)      # output_dir is named after the whole config: reruns reuse the run
print("output_dir:", cfg.output_dir)

# %% [markdown]
# ## 1. One step, by hand
#
# We need the class images (04 made them; this fills the folder if you start here) and the cached latents
# (03). Then, for one instance image and one class image: draw the latent, add noise at a random timestep,
# and let the UNet predict that noise from the noisy latent and the prompt.

# %%
import torch.nn.functional as F

from dbtutor.latent_cache import sample_latents

pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE)
dbtutor.generate_regularization(cfg, pipe)
cache = dbtutor.cache_subject_latents(cfg, pipe)
inst, reg = cache["instance"], cache["regularization"]
print(f"cached latents: {len(inst['mean'])} instance, {len(reg['mean'])} class")

from diffusers import DDPMScheduler
noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
g = torch.Generator().manual_seed(SEED)
z = torch.cat([sample_latents(inst["mean"][:1], inst["logvar"][:1], g),          # instance first,
               sample_latents(reg["mean"][:1], reg["logvar"][:1], g)])           # class second
z = (z * pipe.vae.config.scaling_factor).to(DEVICE)
noise = torch.randn(z.shape, generator=g).to(DEVICE)
t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2,), generator=g).to(DEVICE)
noisy = noise_scheduler.add_noise(z, noise, t)
ids = pipe.tokenizer([INSTANCE_PROMPT, CLASS_PROMPT], padding="max_length", truncation=True,
                     max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(DEVICE)
with torch.no_grad():
    pred = pipe.unet(noisy, t, pipe.text_encoder(ids)[0]).sample
print("timesteps", t.tolist(), "prediction", tuple(pred.shape))

# %% [markdown]
# The loss, by hand: split the batch into its instance and class halves.

# %%
pred_instance, pred_prior = torch.chunk(pred, 2, dim=0)
target_instance, target_prior = torch.chunk(noise, 2, dim=0)
instance_loss = F.mse_loss(pred_instance, target_instance)
prior_loss = F.mse_loss(pred_prior, target_prior)
loss_by_hand = instance_loss + PRIOR_LOSS_WEIGHT * prior_loss

loss, inst_l, prior_l = dbtutor.dreambooth_loss(pred, noise, True, PRIOR_LOSS_WEIGHT)
print(f"by hand: {loss_by_hand:.5f} = {instance_loss:.5f} + {PRIOR_LOSS_WEIGHT} * {prior_loss:.5f}")
print(f"dbtutor: {loss:.5f} = {inst_l:.5f} + {PRIOR_LOSS_WEIGHT} * {prior_l:.5f}")
assert torch.allclose(loss, loss_by_hand)
del pipe

# %% [markdown]
# ## 2. Training, with the package
#
# `dbtutor.train(cfg)` repeats that step `MAX_STEPS` times with AdamW on the UNet (the text encoder stays frozen,
# `train_text_encoder: false`, as in diffusers' and NeMo's defaults; 07 shows what training it does), and adds
# what a real run needs: class images and latent cache made if missing,
# learning-rate warmup, gradient clipping, checkpoints it can resume from, and a saved diffusers pipeline.
# The output folder is named after the config, so running this cell again (or 06 later) finds the finished
# run instead of training again.

# %%
result = dbtutor.train(cfg)
last = result.history[-1]
print(f"{len(result.history)} steps ({result.seconds:.0f} s this call); last instance loss "
      f"{last['instance_loss']:.4f}, prior loss {last['prior_loss']:.4f}")
print("saved pipeline:", sorted(p.name for p in result.output_dir.iterdir() if not p.name.startswith(".")))

# %%
import matplotlib.pyplot as plt

from dbtutor.plots import loss_curves

loss_curves({f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})": result.history}, smooth=20)
plt.show()

# %% [markdown]
# Each step draws its own timestep, and the noise-prediction error depends mostly on the timestep, so the
# curves are noisy even after smoothing. The **instance loss** falls as the model fits the few subject images;
# the **prior loss** should stay about where it started: the model still predicts its own class samples.
# If the prior loss climbs, the class is drifting.
#
# ## 3. What the trained model draws

# %%
from dbtutor.plots import image_grid
from dbtutor.widgets import sample_rows

rows = [INSTANCE_PROMPT] + PROMPTS
images = sample_rows(result.pipe, rows, SEEDS, SAMPLER_STEPS, GUIDANCE)
image_grid(images, rows=len(rows), row_labels=rows, title=f"after {MAX_STEPS} steps with prior preservation")
plt.show()

# %%
# The toy world's judge names the object, colour, pattern, scene and "look" of an image; the subject's look
# ("twotone" for the ball) never occurs in the base world, so counting it measures what training changed.
from dbtutor.toyworld.judge import load_judge, predict
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
judge = load_judge(JUDGE_DIR) if LOOK else None      # a real photo subject (dog6) has no judge
print("subject look:", LOOK)

# %%
from dbtutor.widgets import judge_scores

if judge is not None:
    k = len(SEEDS)
    scores = judge_scores(judge, images[:2 * k], images[2 * k:], LOOK)
    print(f"subject fidelity {scores['subject_fidelity']:.2f} (share of 'sks' samples with the subject's look); "
          f"class drift {scores['class_drift']:.2f} (share of {CLASS_PROMPT!r} samples with it)")

# %% [markdown]
# ## 4. Play
#
# Sample the trained model with your own prompts: `a photo of sks ball on the beach`, `... at night`, or the
# bare class.

# %%
from dbtutor.widgets import sampler_panel

sampler_panel(result.pipe, PROMPTS[0], seed=SEEDS[0], num=4, guidance=GUIDANCE, steps=SAMPLER_STEPS)

# %% [markdown]
# **Next:** [06 · With and without prior preservation](06_with_and_without_prior.ipynb): the same training
# without the class half of the loss, and what it does to "a photo of a ball".
