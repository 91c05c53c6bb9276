# %% [markdown]
# # 07 · Going further
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# The same recipe scales from the toy world to Stable Diffusion v1.5. This notebook looks at the switches
# that matter on the way: training the text encoder or not, LoRA adapters instead of full fine-tuning,
# several GPUs, and the settings for real photos on a GPU.

# %% [markdown]
# ## What you will learn
#
# - what `train_text_encoder` changes, in trainable parameters and in what the identifier means
# - LoRA (`model.lora.rank`): a few adapter weights instead of the whole UNet, loadable with stock diffusers
# - data-parallel training on several GPUs with `accelerate launch`
# - moving the whole course to Stable Diffusion v1.5 on a GPU with your own photos: one switch, and what fits where
# - using the trained model elsewhere: its model card, one file for the web UIs, sharing it on the Hub

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
SAMPLES_PER_PROMPT = None # images per prompt (toy 8, sd15 4)
LORA_RANK, LORA_STEPS, LORA_LR = 4, 100, 1e-3   # section 3's LoRA run when the profile trains the whole UNet
NUM_GPUS, NUM_MACHINES = 8, 2                   # for the printed multi-GPU / multi-node launch commands
TRY_SD15 = False          # True (on a GPU): section 5 trains Stable Diffusion v1.5 here, with the sd15 profile

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, max_steps=MAX_STEPS,
                 samples_per_prompt=SAMPLES_PER_PROMPT)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import dbtutor
from dbtutor.course.plots import bar_chart, comparison_grid, image_grid

# %% [markdown]
# ## 1. What is trained
#
# By hand: count the weights of the UNet and the text encoder. Then ask the package what each setting trains
# (`dbtutor.models.lora.trainable_parameters`, after `add_lora` for LoRA). The counting needs only the shapes, so the
# copies are built on PyTorch's "meta" device: no memory, no weights.

# %%
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from dbtutor.models.lora import add_lora, trainable_parameters

pipe = C.load_pipeline()
n_unet = sum(p.numel() for p in pipe.unet.parameters())
n_text = sum(p.numel() for p in pipe.text_encoder.parameters())
print(f"by hand: UNet {n_unet / 1e6:.2f} M, text encoder {n_text / 1e6:.2f} M weights")

counts = {}
for label, te, rank in [("UNet + text encoder", True, 0), ("UNet only", False, 0),
                        (f"LoRA r={C.lora_rank or LORA_RANK} (UNet + text)", True, C.lora_rank or LORA_RANK)]:
    c = dbtutor.load_config(overrides={**C.overrides, "model.train_text_encoder": te, "model.lora.rank": rank,
                                       "output_dir": str(C.work / "runs" / "unused")})
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
        text = CLIPTextModel(pipe.text_encoder.config)
    unet.requires_grad_(True)
    text.requires_grad_(te)
    add_lora(c, unet, text)
    counts[label] = sum(x.numel() for x in trainable_parameters(c, unet, text)) / 1e6
assert abs(counts["UNet + text encoder"] - (n_unet + n_text) / 1e6) < 1e-6
bar_chart(counts, "million trainable weights", "what each setting trains", fmt="{:.3f}")
plt.show()

# %% [markdown]
# ## 2. `train_text_encoder`
#
# The identifier only means something if the text encoder turns "sks ball" into something different from
# "a ball". Both base models' text encoders already do (02), so the default leaves it frozen, as diffusers' and
# NeMo's scripts do, and the UNet learns what that vector should draw. Training the text encoder as well
# (`model.train_text_encoder: true`) changes more than the identifier: the same weights read every prompt, the
# class prompt and the empty prompt that classifier-free guidance uses as its "unconditional" direction included.
# With LoRA (the sd15 profile) that means LoRA adapters on the text encoder's attention projections as well
# (`q_proj`, `k_proj`, `v_proj`, `out_proj`), trained with the UNet's adapters at the same learning rate, 1e-4, as
# diffusers' `train_dreambooth_lora.py --train_text_encoder` does; with full fine-tuning the whole text encoder, at
# 2e-6 (diffusers' DreamBooth documentation) and, on a GPU, the memory settings that fit with it trained
# (`dbtutor.models.memory`). By hand, how far the run with it trained moved each prompt's output (relative L2 over every
# position, as 02 measured), then `dbtutor.text_moved`, which does the same:

# %%
pipe.to("cpu")                                       # the base model waits in CPU memory while a run trains
frozen = C.train()                                   # the run of 05 (reused if it exists)
frozen_pipe = C.ready(frozen.pipe)
both = {"text encoder frozen (default)": C.sample_rows(frozen_pipe, C.prompts)}
pipe.to(C.device)
MOVED = [C.class_prompt, C.instance_prompt, C.prompts[0], ""]
if not C.train_text_encoder:                         # the default run's text encoder is the base model's
    assert max(dbtutor.text_moved(pipe, frozen_pipe, MOVED)) < 1e-3
del frozen_pipe
frozen.pipe = None
pipe.to("cpu")
course.free_memory()

from dbtutor.models import memory

TEXT_ENCODER = {"model.train_text_encoder": True}     # LoRA: its adapters join the UNet's, at the same settings
if C.lora_rank == 0 and C.device.type == "cuda" and C.profile != "toy":   # full fine-tuning on a GPU: what fits
    full = memory.gpu_settings(kind="full", train_text_encoder=True)
    print("text encoder trained too:", full.pop("why"))
    TEXT_ENCODER.update(full)
te_run = C.train(TEXT_ENCODER)
te_pipe = C.ready(te_run.pipe)
pipe.to(C.device)
ids = pipe.tokenizer(MOVED, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                     return_tensors="pt").input_ids.to(C.device)
with torch.no_grad():
    e0, e1 = pipe.text_encoder(ids)[0].float(), te_pipe.text_encoder(ids)[0].float()
by_hand = [((b - a).norm() / a.norm()).item() for a, b in zip(e0, e1)]
moved = dbtutor.text_moved(pipe, te_pipe, MOVED)
assert max(abs(x - y) for x, y in zip(by_hand, moved)) < 1e-3
print("moved by training the text encoder:")
for prompt, x in zip(MOVED, moved):
    print(f"  {prompt or '(the empty prompt of guidance)'!r:38s} {x:.3f}")
print(f"{C.instance_prompt!r} vs {C.class_prompt!r}: "
      f"{dbtutor.text_shift(pipe, C.class_prompt, C.instance_prompt)[0]:.3f} before, "
      f"{dbtutor.text_shift(te_pipe, C.class_prompt, C.instance_prompt)[0]:.3f} after")
both["text encoder trained too"] = C.sample_rows(te_pipe, C.prompts)
del te_pipe
te_run.pipe = None
course.free_memory()

# %% [markdown]
# The same prompts and seeds from both runs, measured with the course's stick (01):

# %%
from dbtutor.measuring.measure import report

comparison_grid(both, C.prompts, len(C.seeds), title=f"{C.max_steps} steps each, with prior preservation")
plt.show()
M = C.measure()
k = len(C.seeds)
if M is not None:
    for name, images in both.items():
        print(report(name, M.scores(images[:k], images[k:])))

# %% [markdown]
# Training the text encoder moves the class prompt about as far as the identifier stands from it, and the empty
# prompt of guidance further still, while the distance between "sks ball" and "a ball" does not grow: the
# prior loss now has to hold a class prompt whose meaning itself is moving, and guidance pushes away from a
# different "unconditional" picture. On the toy model that costs fidelity and the class's colours for nothing in
# return (docs/results.md). Stable Diffusion's CLIP is large and already reads rare tokens, so there too the
# default is a frozen text encoder; training it can help a subject the frozen one cannot express, at the price
# of memory and drift.
#
# ## 3. LoRA
#
# `model.lora.rank > 0` freezes the base weights and trains low-rank adapters on the attention projections
# (with peft). The result is a small `pytorch_lora_weights.safetensors` that stock diffusers loads onto the
# base model with `load_lora_weights`. The sd15 profile trains LoRA already (its run of 05 is reused); the toy
# profile trains the whole UNet, so here it makes a short LoRA run:

# %%
from diffusers import StableDiffusionPipeline

from dbtutor.models.lora import WEIGHT_NAME

seeds = C.seeds[:4]
if C.lora_rank:                                      # the course's run is a LoRA run: section 2 sampled it already
    rows = both["text encoder frozen (default)"]     # prompt after prompt, k seeds each
    lora, ours = frozen, [im for p in range(len(C.prompts)) for im in rows[p * k:p * k + len(seeds)]]
else:
    lora = C.train({"model.lora.rank": LORA_RANK, "trainer.max_steps": LORA_STEPS, "optim.lr": LORA_LR})
    ours = C.sample_rows(C.ready(lora.pipe), C.prompts, seeds)
    lora.pipe = None
lora_file = lora.output_dir / WEIGHT_NAME
print(f"{lora_file.name}: {lora_file.stat().st_size / 1e6:.2f} MB; the UNet it adapts: "
      f"{n_unet * 4 / 1e6:.0f} MB in float32")
del pipe
course.free_memory()
from dbtutor.models.model_source import stock_variant

stock = StableDiffusionPipeline.from_pretrained(str(C.pretrained), variant=stock_variant(C.pretrained, C.variant),
                                                safety_checker=None, requires_safety_checker=False)
stock.load_lora_weights(lora.output_dir, weight_name=WEIGHT_NAME)   # plain diffusers (weight_name: also offline)
stock.to(C.device, C.dtype)
theirs = C.sample_rows(stock, C.prompts, seeds)
del stock
course.free_memory()
diff = np.stack([np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)) for a, b in zip(ours, theirs)])
print(f"dbtutor's pipeline vs stock diffusers + the LoRA file: largest pixel difference {diff.max()}, "
      f"mean {diff.mean():.3f}")
assert diff.mean() < (0.5 if C.dtype == torch.float32 else 3)    # float16: merged vs separate adapters round apart
comparison_grid({"LoRA, dbtutor": ours, "LoRA, stock diffusers": theirs}, C.prompts, len(seeds),
                title=f"LoRA rank {C.lora_rank or LORA_RANK}")
plt.show()

# %% [markdown]
# ## 4. Several GPUs
#
# `dbtutor train` runs under `accelerate launch`: each process takes its share of the class images to
# generate and its slice of every global batch (data parallel, NeMo's "Data parallelism"); `trainer.batch_size`
# is per process, so N processes with batch B train like one process with batch N·B. The commands for this
# notebook's settings (`dbtutor.commands.cli.launch_commands`):

# %%
from dbtutor.commands.cli import build_parser, launch_commands

keys = {k: v for k, v in C.overrides.items() if k not in ("trainer.device", "trainer.precision")}
args = ["train"] + [f"{k}={v}" for k, v in keys.items()] + ["output_dir=work/runs/multi_gpu"]
for where, command in launch_commands(args, gpus=NUM_GPUS, machines=NUM_MACHINES).items():
    print(f"# {where}\n{command}\n")
ns = build_parser().parse_args(args)                          # the command parses,
dbtutor.load_config(ns.config, ns.overrides)                  # and its keys are valid

# %% [markdown]
# Several machines need `output_dir` and the class-image and cache folders on a shared file system; the main
# process builds the latent cache while the others wait, and only it writes checkpoints and the output.
#
# ## 5. Stable Diffusion v1.5 with your own photos
#
# One switch moves the whole course: `PROFILE = "sd15"` in any notebook's parameters cell (later notebooks follow
# that choice), or `DBTUTOR_PROFILE=sd15` in the environment. Your photos: `SUBJECT_DIR` (3-5 photos of one subject,
# varied backgrounds and poses, the subject filling the centre) and `CLASS_NOUN` (what they show). On Colab:
# *Runtime → Change runtime type → T4 GPU*; the work folder is in Google Drive there, so that the runs and these
# choices survive a disconnect and reach the next notebook. What the sd15 profile would use here:

# %%
sd = course.settings("sd15", work=C.work)
print(sd.table())
print(f"prompts {sd.instance_prompt!r} / {sd.class_prompt!r}; on {sd.device}, trainer.precision {sd.precision}")

# %% [markdown]
# On a GPU the course trains LoRA on every card (adapters of a few MB to keep, and room to spare on a 16 GB T4),
# with the precision and gradient checkpointing `dbtutor.models.memory.gpu_settings(kind="lora")` picks for the card, and
# fetches SD v1.5's fp16 files (`model.variant`, half the download). Full fine-tuning only when asked
# (`LORA_RANK = 0` in 05's parameters, kept for 06 and 07, or `DBTUTOR_NB_LORA_RANK=0`): then the full fine-tuning setting that fits (on a T4: gradient
# checkpointing and 8-bit AdamW, `pip install 'dbtutor[gpu]'`). The command line's `gpu_settings()` prefers full
# fine-tuning wherever it fits. The estimates (weights, gradients, optimizer state counted; activations measured
# at 512 px with SD v1.5's architecture on a CPU; not measured on a GPU):

# %%
from IPython.display import Markdown, display

from dbtutor.models import memory

display(Markdown(memory.table()))
for gib, name in ((11.7, "a 12 GB card"), (14.7, "a 16 GB T4"), (22.0, "a 24 GB card")):
    print(f"{name}\n  the course:       {memory.gpu_settings(gib, bnb=True, kind='lora')['why'].split(':')[0]}"
          f"\n  full, when asked: {memory.gpu_settings(gib, bnb=True, kind='full')['why'].split(':')[0]}"
          f"\n  the command line: {memory.gpu_settings(gib, bnb=True)['why'].split(':')[0]} (bitsandbytes installed)")

# %% [markdown]
# The run itself, here and now, only when asked (`TRY_SD15 = True`, on a GPU; about 10 minutes on a T4): the
# same `dbtutor.train` as every notebook, with the sd15 profile's config.

# %%
if C.profile == "sd15":
    print("this course runs the sd15 profile already: the runs above are its runs")
elif TRY_SD15 and torch.cuda.is_available():
    run = sd.train()
    image_grid(sd.sample_rows(sd.ready(run.pipe), sd.prompts), rows=2, row_labels=sd.prompts, scale=2.5)
    plt.show()
else:
    print("not run: set TRY_SD15 = True on a GPU, or run the course with PROFILE = 'sd15'")

# %% [markdown]
# The command line does the same: `dbtutor train model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5
# model.data.instance_dir=data/dog6 "model.data.instance_prompt=a photo of sks dog"
# "model.data.regularization_prompt=a photo of a dog" model.data.resolution=512 trainer.precision=16
# model.lora.rank=16 model.variant=fp16`, then `dbtutor sample --prompt "a photo of sks dog on the beach"`.
#
# ## 6. Use your model elsewhere
#
# Every run folder holds a **model card** (`README.md`, in the Hugging Face Hub's format): what was trained and how,
# a sample grid, the code that loads it, and the base model's license. The LoRA run's:

# %%
card = (lora.output_dir / "README.md").read_text()
display(Markdown(card.split("---", 2)[-1]))               # the card without its YAML header

# %% [markdown]
# AUTOMATIC1111's web UI and ComfyUI read one `.safetensors` file in Stable Diffusion's original key layout (a LoRA
# in kohya's). `dbtutor export RUN --out FILE.safetensors` (or `dbtutor.sharing.export.export`) writes it; a model whose
# blocks are not Stable Diffusion 1.x/2.x's (the toy world's are smaller) is refused, with what to use instead:

# %%
from dbtutor.sharing.export import NotStableDiffusion, export

for run in {r.output_dir: r for r in (frozen, lora)}.values():    # the sd15 profile's are one run
    try:
        got = export(run.output_dir, C.work / "exports" / f"{run.output_dir.name}.safetensors")
        print(f"{run.output_dir.name}: a {got['kind']} of {got['tensors']} tensors, {got['bytes'] / 1e6:.1f} MB")
    except NotStableDiffusion as e:
        print(f"{run.output_dir.name}: {e}")

# %% [markdown]
# And to share it: `dbtutor push RUN --repo-id YOU/NAME` uploads the run with its card to the Hugging Face Hub
# (log in first: `huggingface-cli login`). `--dry-run` lists what would go, without a network:

# %%
from dbtutor.sharing.push import push

for name, size in push(lora.output_dir, "you/sks-model", dry_run=True)["files"]:
    print(f"{size / 1e6:9.2f} MB  {name}")

# %% [markdown]
# That is the course: the prior (01), the subject and its word (02), latents (03), class images (04), the loss
# and training (05), drift and its cure (06), and the switches for real models (07).
