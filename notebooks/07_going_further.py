# %% [markdown]
# # 07 · Going further
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/07_going_further.ipynb)
#
# The same recipe scales from the toy world to Stable Diffusion v1.5. This notebook looks at the switches
# that matter on the way: training the text encoder or not, LoRA adapters instead of full fine-tuning,
# several GPUs, and the settings for real photos.

# %% [markdown]
# ## What you will learn
#
# - what `train_text_encoder` changes, in trainable parameters and in what the identifier means
# - LoRA (`model.lora.rank`): a few adapter weights instead of the whole UNet, loadable with stock diffusers
# - data-parallel training on several GPUs with `accelerate launch`
# - moving to Stable Diffusion v1.5 on a GPU with your own photos (`data/dog6`, 512 px)

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
# this notebook: LoRA (DBTUTOR_NB_LORA_STEPS), multi-GPU, and the Stable Diffusion v1.5 run on a GPU
LORA_RANK = 4
LORA_STEPS = setting("LORA_STEPS", 100)
LORA_LR = 1e-3                      # adapters start at zero effect and need a larger step than full weights
NUM_GPUS, NUM_MACHINES = 8, 2      # for the printed multi-GPU / multi-node launch commands
GPU = {                             # run on a CUDA GPU only (section 5)
    "PRETRAINED": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "SUBJECT_DIR": dbtutor.ROOT / "data/dog6",
    "INSTANCE_PROMPT": "a photo of sks dog",
    "CLASS_PROMPT": "a photo of a dog",
    "PROMPTS": ["a photo of sks dog on the beach", "a photo of sks dog in a bucket", "a photo of a dog"],
    "RESOLUTION": 512, "MAX_STEPS": 400, "NUM_REG_IMAGES": 200, "LORA_RANK": 16, "LR": 1e-4,
}
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

from dbtutor.plots import bar_chart, comparison_grid, image_grid
from dbtutor.widgets import run_config, sample_rows, train_run

# %% [markdown]
# ## 1. What is trained
#
# By hand: count the weights of the UNet and the text encoder. Then ask the package what each setting trains
# (`dbtutor.lora.trainable_parameters`, after `add_lora` for LoRA).

# %%
from dbtutor.lora import add_lora, trainable_parameters

pipe = dbtutor.load_pipeline(PRETRAINED)
n_unet = sum(p.numel() for p in pipe.unet.parameters())
n_text = sum(p.numel() for p in pipe.text_encoder.parameters())
print(f"by hand: UNet {n_unet / 1e6:.2f} M, text encoder {n_text / 1e6:.2f} M weights")

counts = {}
for label, te, rank in [("UNet + text encoder", True, 0), ("UNet only", False, 0),
                        (f"LoRA r={LORA_RANK} (UNet + text)", True, LORA_RANK)]:
    c = dbtutor.load_config(overrides={**overrides, "model.train_text_encoder": te, "model.lora.rank": rank,
                                       "output_dir": str(WORK / "runs" / "unused")})
    p = dbtutor.load_pipeline(PRETRAINED)
    p.unet.requires_grad_(True)
    p.text_encoder.requires_grad_(te)
    add_lora(c, p.unet, p.text_encoder)
    counts[label] = sum(x.numel() for x in trainable_parameters(c, p.unet, p.text_encoder)) / 1e6
assert abs(counts["UNet + text encoder"] - (n_unet + n_text) / 1e6) < 1e-6
bar_chart(counts, "million trainable weights", "what each setting trains", fmt="{:.3f}")
plt.show()

# %% [markdown]
# ## 2. `train_text_encoder`
#
# The identifier only means something if the text encoder turns "sks ball" into something different from
# "a ball". This base model's text encoder already does (02: `sks` moves its output about as far as a name), so
# the default leaves it frozen, as diffusers' and NeMo's scripts do, and the UNet learns what that vector should
# draw. Training the text encoder as well (`model.train_text_encoder: true`) changes more than the identifier:
# the same weights read every prompt, the class prompt and the empty prompt that classifier-free guidance uses
# as its "unconditional" direction included. By hand, how far the run with it trained moved each prompt's output
# (relative L2 over every position, as 02 measured), then `dbtutor.text_moved`, which does the same:

# %%
frozen = train_run(overrides, WORK)                  # the run of 05 (reused if it exists)
te_run = train_run({**overrides, "model.train_text_encoder": True}, WORK)
MOVED = [CLASS_PROMPT, INSTANCE_PROMPT, PROMPTS[0], ""]
ids = pipe.tokenizer(MOVED, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                     return_tensors="pt").input_ids
with torch.no_grad():
    e0, e1 = pipe.text_encoder(ids)[0].float(), te_run.pipe.text_encoder(ids.to(te_run.pipe.device))[0].float().cpu()
by_hand = [((b - a).norm() / a.norm()).item() for a, b in zip(e0, e1)]
moved = dbtutor.text_moved(pipe, te_run.pipe, MOVED)
assert max(abs(x - y) for x, y in zip(by_hand, moved)) < 1e-4
if not TRAIN_TEXT_ENCODER:                           # the default run's text encoder is the base model's, exactly
    assert dbtutor.text_moved(pipe, frozen.pipe, MOVED) == [0.0] * len(MOVED)
print("moved by training the text encoder:")
for prompt, x in zip(MOVED, moved):
    print(f"  {prompt or '(the empty prompt of guidance)'!r:38s} {x:.3f}")
print(f"{INSTANCE_PROMPT!r} vs {CLASS_PROMPT!r}: {dbtutor.text_shift(pipe, CLASS_PROMPT, INSTANCE_PROMPT)[0]:.3f} "
      f"before, {dbtutor.text_shift(te_run.pipe, CLASS_PROMPT, INSTANCE_PROMPT)[0]:.3f} after")

# %% [markdown]
# The same prompts and seeds from both runs:

# %%
both = {"text encoder frozen (default)": sample_rows(frozen.pipe, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE),
        "text encoder trained too": sample_rows(te_run.pipe, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)}
frozen.pipe = te_run.pipe = None
comparison_grid(both, PROMPTS, len(SEEDS), title=f"{MAX_STEPS} steps each, with prior preservation")
plt.show()
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
if LOOK:                                             # the toy world's judge; a real photo subject has none
    from dbtutor.toyworld.judge import load_judge
    from dbtutor.widgets import judge_scores
    judge, k = load_judge(JUDGE_DIR), len(SEEDS)
    for name, images in both.items():
        sc = judge_scores(judge, images[:k], images[k:], LOOK)
        print(f"{name:30s} subject fidelity {sc['subject_fidelity']:.2f}   class drift {sc['class_drift']:.2f}")

# %% [markdown]
# Training the text encoder moves the class prompt about as far as the identifier stands from it, and the empty
# prompt of guidance further still, while the distance between "sks ball" and "a ball" does not grow: the
# prior loss now has to hold a class prompt whose meaning itself is moving, and guidance pushes away from a
# different "unconditional" picture. On this model that costs fidelity and the class's colours for nothing in
# return (README: "Which mechanism binds the identifier"). Stable Diffusion's CLIP is large and already reads
# rare tokens, so there too the default is a frozen text encoder; training it can help a subject the frozen one
# cannot express, at the price of memory and drift.
#
# ## 3. LoRA
#
# `model.lora.rank > 0` freezes the base weights and trains low-rank adapters on the attention projections
# (with peft). The result is a small `pytorch_lora_weights.safetensors` that stock diffusers loads onto the
# base model with `load_lora_weights`. A short run:

# %%
lora = train_run({**overrides, "model.lora.rank": LORA_RANK, "trainer.max_steps": LORA_STEPS,
                  "optim.lr": LORA_LR}, WORK)
lora_file = lora.output_dir / "pytorch_lora_weights.safetensors"
full_file = lora.output_dir / "unet" / "diffusion_pytorch_model.safetensors"
print(f"{lora_file.name}: {lora_file.stat().st_size / 1e6:.2f} MB (the whole UNet: {full_file.stat().st_size / 1e6:.1f} MB)")

from diffusers import StableDiffusionPipeline
stock = StableDiffusionPipeline.from_pretrained(str(PRETRAINED), safety_checker=None, requires_safety_checker=False)
stock.load_lora_weights(lora.output_dir)             # plain diffusers, no dbtutor
stock.to(DEVICE)
seeds = SEEDS[:4]
ours = sample_rows(lora.pipe, PROMPTS, seeds, SAMPLER_STEPS, GUIDANCE)
theirs = sample_rows(stock, PROMPTS, seeds, SAMPLER_STEPS, GUIDANCE)
import numpy as np
diff = max(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() for a, b in zip(ours, theirs))
print(f"dbtutor's pipeline vs stock diffusers + LoRA file: largest pixel difference {diff}")
assert diff <= 2
comparison_grid({"LoRA, dbtutor": ours, "LoRA, stock diffusers": theirs}, PROMPTS, len(seeds),
                title=f"LoRA rank {LORA_RANK}, {LORA_STEPS} steps")
plt.show()
lora.pipe = stock = None

# %% [markdown]
# ## 4. Several GPUs
#
# `dbtutor train` runs under `accelerate launch`: each process takes its share of the class images to
# generate and its slice of every global batch (data parallel, NeMo's "Data parallelism"); `trainer.batch_size`
# is per process, so N processes with batch B train like one process with batch N·B. The commands for this
# notebook's settings (`dbtutor.cli.launch_commands`):

# %%
import shlex

from dbtutor.cli import build_parser, launch_commands

keys = {k: v for k, v in overrides.items() if k not in ("trainer.device", "trainer.precision")}
args = ["train"] + [f"{k}={v}" for k, v in keys.items()] + ["output_dir=work/runs/multi_gpu"]
for where, command in launch_commands(args, gpus=NUM_GPUS, machines=NUM_MACHINES).items():
    print(f"# {where}\n{command}\n")
ns = build_parser().parse_args(args)                          # the command parses,
dbtutor.load_config(ns.config, ns.overrides)                  # and its keys are valid

# %% [markdown]
# Several machines need `output_dir` and the class-image and cache folders on a shared file system; the main
# process builds the latent cache while the others wait, and only it writes checkpoints and the output.

# %% [markdown]
# ## 5. Stable Diffusion v1.5 with your own photos
#
# On a GPU (Colab: *Runtime → Change runtime type → GPU*), change the parameters cell of any notebook to the
# values in `GPU` above: `PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"`, `SUBJECT_DIR` = a folder
# of 3-5 photos of your subject (here `data/dog6`, the DreamBooth paper's dog), the identifier and class noun
# (`sks`, `dog`), `RESOLUTION = 512`. Tips: vary backgrounds and poses in your photos; crop them so the
# subject fills the centre; 200 class images and 400-800 steps are a good start. Memory (README, estimated
# from SD v1.5's architecture measured at 512 px on a CPU): LoRA fits a 12 GB card, full fine-tuning in bf16 with
# gradient checkpointing is tight on 16 GB and comfortable on 24 GB. The cell below does all of that, only when
# a CUDA GPU is present.

# %%
gpu_overrides = {
    **overrides,
    "model.pretrained": GPU["PRETRAINED"],
    "model.data.instance_dir": str(GPU["SUBJECT_DIR"]),
    "model.data.instance_prompt": GPU["INSTANCE_PROMPT"],
    "model.data.regularization_prompt": GPU["CLASS_PROMPT"],
    "model.data.regularization_dir": str(WORK / "reg" / "dog-sd15"),
    "model.data.num_reg_images": GPU["NUM_REG_IMAGES"],
    "model.data.num_images_per_prompt": 4,
    "model.data.resolution": GPU["RESOLUTION"],
    "model.train_text_encoder": False,
    "model.lora.rank": GPU["LORA_RANK"],
    "model.gradient_checkpointing": True,
    "model.sampling.num_inference_steps": 30,
    "model.sampling.guidance_scale": 7.5,
    "optim.lr": GPU["LR"],
    "trainer.max_steps": GPU["MAX_STEPS"],
    "trainer.precision": "16",
}
gpu_cfg = run_config(gpu_overrides, WORK)          # checks every key and value, also on a CPU
print("SD v1.5 run would write to", gpu_cfg.output_dir)
if torch.cuda.is_available():
    sd = dbtutor.train(gpu_cfg)
    images = sample_rows(sd.pipe, GPU["PROMPTS"], SEEDS[:4], 30, 7.5)
    image_grid(images, rows=len(GPU["PROMPTS"]), row_labels=GPU["PROMPTS"], scale=2.5)
    plt.show()
else:
    print("no CUDA GPU here: skipped. On a GPU this trains SD v1.5 on data/dog6 at 512 px.")

# %% [markdown]
# The command line does the same: `dbtutor train model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5
# model.data.instance_dir=data/dog6 "model.data.instance_prompt=a photo of sks dog"
# "model.data.regularization_prompt=a photo of a dog" model.data.resolution=512 trainer.precision=16
# model.lora.rank=16`, then `dbtutor sample --prompt "a photo of sks dog on the beach" ...`.
#
# That is the course: the prior (01), the subject and its word (02), latents (03), class images (04), the loss
# and training (05), drift and its cure (06), and the switches for real models (07).
