# %% [markdown]
# # 05 · Training with prior preservation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/) (upload this notebook: File → Upload notebook; its first code cell brings in the course)
#
# Now we teach the model the subject. Each step puts the instance images and the class images through the
# model together; the loss is the usual noise-prediction error on the instance half **plus**
# `prior_loss_weight` times the same error on the class half.

# %% [markdown]
# ## What you will learn
#
# - one training step by hand: latents, noise, timesteps, text embeddings, the UNet's prediction
# - the prior-preservation loss written with `torch.chunk` and `F.mse_loss`, checked against `dbtutor.dreambooth_loss` (NeMo's formula)
# - the whole training loop by hand, in one cell, giving the very losses `dbtutor.train` gives
# - training with `dbtutor.train`, reading the instance and prior loss curves, and watching samples along the way
# - what the trained model draws for the subject and for the bare class

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
NUM_REG_IMAGES = None     # model.data.num_reg_images: class images (toy 200, sd15 50)
PRIOR_LOSS_WEIGHT = None  # model.prior_loss_weight, λ (toy 1.0, sd15 1.0)
LR = None                 # optim.lr (toy 0.0001, sd15 by GPU)
LORA_RANK = None          # model.lora.rank, LoRA; 0: the whole UNet, on a GPU only if set here (toy 0, sd15 16)
# this notebook
SAMPLES_PER_PROMPT = None # images per prompt in the grids (toy 8, sd15 4)
VALIDATION_EVERY = None   # trainer.validation.every: samples along the way (toy 100, sd15 200)
LOOP_STEPS = 20           # steps of the loop written by hand in section 2

# %%
from dbtutor import course

C = course.setup(PROFILE, WORK_ON_DRIVE, SUBJECT_DIR, CLASS_NOUN, max_steps=MAX_STEPS,
                 prior_loss_weight=PRIOR_LOSS_WEIGHT, lr=LR, num_reg_images=NUM_REG_IMAGES, lora_rank=LORA_RANK,
                 samples_per_prompt=SAMPLES_PER_PROMPT, validation_every=VALIDATION_EVERY)

# %% [markdown]
# ## 1. One step, by hand
#
# We need the class images (04 made them; this fills the folder if you start here) and the cached latents
# (03). Then, for one instance image and one class image: draw the latent, add noise at a random timestep,
# and let the UNet predict that noise from the noisy latent and the prompt.

# %%
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import dbtutor
from dbtutor.latent_cache import sample_latents

cfg = course.run_config(C.overrides, C.work)      # output_dir is named after the whole config: reruns reuse the run
print("output_dir:", cfg.output_dir)
pipe = C.load_pipeline()
dbtutor.generate_regularization(cfg, pipe)
cache = dbtutor.cache_subject_latents(cfg, pipe)
inst, reg = cache["instance"], cache["regularization"]
print(f"cached latents: {len(inst['mean'])} instance, {len(reg['mean'])} class")

noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
g = torch.Generator().manual_seed(C.seed)
z = torch.cat([sample_latents(inst["mean"][:1], inst["logvar"][:1], g),          # instance first,
               sample_latents(reg["mean"][:1], reg["logvar"][:1], g)])           # class second
z = (z * pipe.vae.config.scaling_factor).to(C.device, C.dtype)
noise = torch.randn(z.shape, generator=g).to(C.device, C.dtype)
t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2,), generator=g).to(C.device)
noisy = noise_scheduler.add_noise(z, noise, t)
ids = pipe.tokenizer([C.instance_prompt, C.class_prompt], padding="max_length", truncation=True,
                     max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(C.device)
with torch.no_grad():
    pred = pipe.unet(noisy, t, pipe.text_encoder(ids)[0]).sample.float()
noise = noise.float()
print("timesteps", t.tolist(), "prediction", tuple(pred.shape))

# %% [markdown]
# The loss, by hand: split the batch into its instance and class halves.

# %%
pred_instance, pred_prior = torch.chunk(pred, 2, dim=0)
target_instance, target_prior = torch.chunk(noise, 2, dim=0)
instance_loss = F.mse_loss(pred_instance, target_instance)
prior_loss = F.mse_loss(pred_prior, target_prior)
loss_by_hand = instance_loss + C.prior_loss_weight * prior_loss

loss, inst_l, prior_l = dbtutor.dreambooth_loss(pred, noise, True, C.prior_loss_weight)
print(f"by hand: {loss_by_hand:.5f} = {instance_loss:.5f} + {C.prior_loss_weight} * {prior_loss:.5f}")
print(f"dbtutor: {loss:.5f} = {inst_l:.5f} + {C.prior_loss_weight} * {prior_l:.5f}")
assert torch.allclose(loss, loss_by_hand)

# %% [markdown]
# ## 2. The loop, by hand
#
# Training repeats that step: draw a latent of `batch_size` subject images and as many class images, add noise at
# random timesteps, predict it with each image's prompt, take the two-part loss, step the optimizer. Every random
# number of a step comes from `(seed, step)` (`step_generator`), so a run interrupted and resumed draws what an
# unbroken one does. Here in one cell, for `LOOP_STEPS` steps, on the package's own pieces: the cached latents, the
# two prompts' embeddings (the text encoder is frozen), `dreambooth_loss`. The sd15 profile trains LoRA adapters
# (`add_lora`) instead of the whole UNet; the loop is the same. In float32, so that it can be compared with
# `dbtutor.train` on the same settings, trained first (a short run of its own). On a GPU this loop trains LoRA
# adapters whatever the course trains: the whole UNet with plain AdamW in float32 needs about 15.7 GiB, more than
# a T4 has (`python -m dbtutor.models.memory`). Each loads its own float32 pipeline, so section 1's copy is freed first (on
# a GPU it would hold 2 GiB of the memory training needs):

# %%
from dbtutor.models.lora import add_lora, trainable_parameters
from dbtutor.train import step_generator

pipe = None                                                          # section 1's pipeline: freed
course.free_memory()
loop_cfg = course.run_config({**C.overrides, "trainer.max_steps": LOOP_STEPS, "trainer.precision": "32",
                              "trainer.validation.every": 0, "model.sampling.card_seeds": 0,
                              "model.lora.rank": C.lora_rank or (16 if C.device.type == "cuda" else 0)}, C.work)
reference = dbtutor.train(loop_cfg, progress=False)
reference.pipe = None
course.free_memory()

pipe = dbtutor.load_pipeline(C.pretrained, device=C.device, variant=loop_cfg.model.variant)   # float32
unet, vae = pipe.unet, pipe.vae
latents = dbtutor.cache_subject_latents(loop_cfg, pipe)              # mean and log-variance of each image
with torch.no_grad():
    embeds = pipe.text_encoder(ids)[0]                               # [instance prompt, class prompt]
unet.requires_grad_(True)
add_lora(loop_cfg, unet, pipe.text_encoder)                          # LoRA (sd15, any GPU): adapters only; toy: nothing
if loop_cfg.model.gradient_checkpointing:
    unet.enable_gradient_checkpointing()                             # less memory, the same numbers
params = trainable_parameters(loop_cfg, unet, pipe.text_encoder)
optimizer = torch.optim.AdamW(params, lr=C.lr, weight_decay=loop_cfg.optim.weight_decay)
B, shape, T = loop_cfg.trainer.batch_size, latents["instance"]["mean"].shape[1:], 1000
unet.train()
losses = []
for step in range(LOOP_STEPS):
    g = step_generator(C.seed, step)                # every random number of this step comes from (seed, step)
    z, noise, t = [], [], []
    for part in ("instance", "regularization"):     # B subject images, then B class images
        mean, logvar = latents[part]["mean"], latents[part]["logvar"]
        i = torch.randint(0, 2 ** 31 - 1, (B,), generator=g) % len(mean)      # which images
        vae_noise = torch.randn((B, *shape), generator=g)
        noise.append(torch.randn((B, *shape), generator=g))
        t.append(torch.randint(0, T, (B,), generator=g))
        z.append((mean[i] + (0.5 * logvar[i]).exp() * vae_noise) * vae.config.scaling_factor)   # a latent sample
    z, noise, t = torch.cat(z).to(C.device), torch.cat(noise).to(C.device), torch.cat(t).to(C.device)
    noisy = noise_scheduler.add_noise(z, noise, t)                    # forward diffusion to timestep t
    pred = unet(noisy, t, embeds[[0] * B + [1] * B]).sample           # predict the noise, each with its prompt
    loss, instance_loss, prior_loss = dbtutor.dreambooth_loss(pred, noise, True, C.prior_loss_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, loop_cfg.optim.max_grad_norm)
    for group in optimizer.param_groups:            # linear warmup, then constant
        group["lr"] = C.lr * min(1.0, (step + 1) / loop_cfg.optim.warmup_steps)
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())

theirs = [h["loss"] for h in reference.history]
worst = max(abs(a - b) / abs(b) for a, b in zip(losses, theirs))
print(f"{LOOP_STEPS} steps by hand vs dbtutor.train: largest relative difference of the loss {worst:.1e}")
assert worst < (1e-5 if C.device.type == "cpu" else 1e-3)           # GPU kernels need not be bit-reproducible
del pipe, unet, vae, optimizer, params
course.free_memory()

# %% [markdown]
# ## 3. Training, with the package
#
# `dbtutor.train(cfg)` is that loop for `max_steps` steps (the text encoder stays frozen, `train_text_encoder:
# false`, as in diffusers' and NeMo's defaults; 07 shows what training it does), plus what a real run needs: class
# images and latent cache made if missing, mixed precision with loss scaling on a GPU, checkpoints it can resume
# from, samples at fixed seeds every `validation.every` steps, and a saved diffusers pipeline with a model card.
# The output folder is named after the config, so running this cell again (or 06 later) finds the finished
# run instead of training again.

# %%
result = dbtutor.train(cfg)
last = result.history[-1]
print(f"{len(result.history)} steps ({result.seconds:.0f} s this call); last instance loss "
      f"{last['instance_loss']:.4f}, prior loss {last['prior_loss']:.4f}")
print("saved:", sorted(p.name for p in result.output_dir.iterdir() if not p.name.startswith(".")))

# %%
import matplotlib.pyplot as plt

from dbtutor.course.plots import loss_curves

loss_curves({f"with prior preservation (λ={C.prior_loss_weight:g})": result.history}, smooth=20)
plt.show()

# %% [markdown]
# Each step draws its own timestep, and the noise-prediction error depends mostly on the timestep, so the
# curves are noisy even after smoothing. The **instance loss** falls as the model fits the few subject images;
# the **prior loss** should stay about where it started: the model still predicts its own class samples.
# If the prior loss climbs, the class is drifting.
#
# The samples along the way (`output_dir/validation`): the same prompts and seeds at every validation step, from
# the base model (step 0) to the end. Move the slider to see one step whole.

# %%
from dbtutor.runs.validation import load_validations
from dbtutor.course.plots import validation_strips
from dbtutor.course.widgets import validation_panel

run = load_validations(result.output_dir)
validation_strips({"with prior preservation": run}, prompt=run.instance_prompt)
plt.show()
validation_panel(result.output_dir)

# %% [markdown]
# ## 4. What the trained model draws

# %%
from dbtutor.course.plots import image_grid

trained = C.ready(result.pipe)
rows = [C.instance_prompt] + C.prompts
images = C.sample_rows(trained, rows)
image_grid(images, rows=len(rows), row_labels=rows, title=f"after {C.max_steps} steps with prior preservation")
plt.show()

# %% [markdown]
# The course's measuring stick (01): how often the subject prompts show the subject (subject fidelity), and how
# often the bare class prompt does (class drift; it should stay where the base model was).

# %%
from dbtutor.measuring.measure import report

M = C.measure()
k = len(C.seeds)
if M is not None:
    print(report("after training", M.scores(images[:2 * k], images[2 * k:])), f"({M.unit})")

# %% [markdown]
# ## 5. Play
#
# Sample the trained model with your own prompts: the subject on the beach, at night, or the bare class.

# %%
from dbtutor.course.widgets import sampler_panel

sampler_panel(trained, C.prompts[0], seed=C.seeds[0], num=4, guidance=C.guidance, steps=C.sampler_steps,
              batch_size=C.sample_batch)

# %% [markdown]
# **Next:** [06 · With and without prior preservation](06_with_and_without_prior.ipynb): the same training
# without the class half of the loss, and what it does to the bare class prompt.
