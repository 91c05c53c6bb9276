"""Write the course notebooks (notebooks/NN_topic.ipynb) from the Python source below, without outputs.

    python tools/build_notebooks.py            # (re)write every notebook
    python tools/build_notebooks.py --check    # exit 1 if a committed notebook differs from what this writes

The notebooks are generated so that their source is reviewable here and identical settings stay identical
across notebooks (the parameters and the training overrides are shared strings). Edit this file, not the
.ipynb files: tests/test_notebooks_static.py fails when they differ.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
COLAB = "https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/{name}"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


class Notebook:
    def __init__(self, name: str, title: str, intro: str, learn: list[str], parameters: str):
        self.name, self.cells = name, []
        self.md(f"# {title}\n\n[![Open In Colab]({BADGE})]({COLAB.format(name=name)})\n\n{src(intro)}")
        self.md("## What you will learn\n\n" + "\n".join(f"- {x}" for x in learn))
        self.code(INSTALL)
        self.code(PARAMETERS_HEAD + "\n" + src(parameters) + "\n" + PARAMETERS_TAIL, tags=["parameters"])

    def md(self, text: str):
        self.cells.append(nbformat.v4.new_markdown_cell(src(text)))

    def code(self, text: str, tags: list[str] | None = None):
        cell = nbformat.v4.new_code_cell(src(text))
        if tags:
            cell.metadata["tags"] = tags
        self.cells.append(cell)

    def build(self) -> str:
        nb = nbformat.v4.new_notebook()
        nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}
        stem = self.name[:2]
        for i, cell in enumerate(self.cells):
            cell["id"] = f"nb{stem}-{i:02d}"          # fixed ids: the file is a pure function of this script
        nb.cells = self.cells
        nbformat.validate(nb)
        text = nbformat.writes(nb, version=4)
        return text if text.endswith("\n") else text + "\n"


# ----------------------------------------------------------------------------- cells shared by every notebook

INSTALL = '''
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
'''

PARAMETERS_HEAD = src('''
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
MAX_STEPS = setting("MAX_STEPS", 300)
PRIOR_LOSS_WEIGHT = setting("PRIOR_LOSS_WEIGHT", 1.0)
NUM_REG_IMAGES = setting("NUM_REG_IMAGES", 50)
LR = 1e-4
TRAIN_TEXT_ENCODER = True
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
''')

PARAMETERS_TAIL = src('''
# device and dtype, picked automatically
DEVICE = dbtutor.pick_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
PRECISION = "16" if DEVICE.type == "cuda" else "32"               # trainer.precision
print(f"base model {PRETRAINED} on {DEVICE} ({DTYPE}); results in {WORK}")
''')

# The training config of the course, in NeMo's keys. 04-07 share it verbatim, so that a run made in one notebook
# is found (not retrained) by the next: dbtutor.widgets.run_dir names a run's folder after its whole config.
OVERRIDES = '''
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
'''

JUDGE = '''
# The toy world's judge names the object, colour, pattern, scene and "look" of an image; the subject's look
# ("twotone" for the ball) never occurs in the base world, so counting it measures what training changed.
from dbtutor.toyworld.judge import load_judge, predict
from dbtutor.toyworld.subjects import load_subject

LOOK = load_subject(SUBJECT_DIR)["look"] if (SUBJECT_DIR / "subject.json").exists() else None
judge = load_judge(JUDGE_DIR) if LOOK else None      # a real photo subject (dog6) has no judge
print("subject look:", LOOK)
'''


# ----------------------------------------------------------------------------- 01

def nb01() -> Notebook:
    nb = Notebook(
        "01_base_model_and_prior.ipynb", "01 · The base model and its prior",
        """
        DreamBooth starts from a text-to-image model that already knows the world. Before we teach it a new
        subject, we look inside it, sample from it by hand, and see its **prior**: what it believes
        "a photo of a ball" looks like. That prior is exactly what DreamBooth must not destroy.
        """,
        ["what a latent text-to-image model is made of: tokenizer, text encoder, UNet, VAE, scheduler",
         "how sampling works: a denoising loop with classifier-free guidance, written by hand in a few lines, "
         "then `dbtutor.sample`, and that both give the same image",
         "what the class prior is, in pictures and in numbers",
         "how prompt, seed, guidance scale and steps change the picture (a sampler widget)"],
        """
        # this notebook: prompts that show the prior, and guidance scales to compare
        PRIOR_PROMPTS = [CLASS_PROMPT, "a photo of a red ball", "a photo of a ball on the snow"]
        GUIDANCES = [1.0, 3.0, 5.0, 9.0]
        """)
    nb.md("""
    ## 1. The parts of the model

    A Stable-Diffusion-style model works in a small **latent** space: the VAE compresses an image into a
    latent (here 64x64x3 pixels into 16x16x4 numbers; for SD v1.5, 512x512x3 into 64x64x4), the tokenizer and
    text encoder turn the prompt into vectors, and the UNet predicts the noise in a noisy latent given those
    vectors. The scheduler turns the noise predictions into a denoising path.
    """)
    nb.code("""
    pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
    for name in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
        part = getattr(pipe, name)
        n = sum(p.numel() for p in part.parameters()) if hasattr(part, "parameters") else 0
        print(f"{name:13s} {type(part).__name__:30s} {n / 1e6:6.2f} M parameters")
    c = pipe.unet.config
    print(f"latents {c.in_channels}x{c.sample_size}x{c.sample_size}, images {RESOLUTION}x{RESOLUTION}x3, "
          f"prompts up to {pipe.tokenizer.model_max_length} tokens")
    """)
    nb.md("""
    ## 2. Sampling, by hand

    Start from pure noise in latent space. At each step the UNet predicts the noise twice, with the prompt and
    with an empty prompt; **classifier-free guidance** pushes away from the unconditional prediction:
    `eps = eps_uncond + g * (eps_cond - eps_uncond)`. The scheduler (DDIM here) removes a little of that noise.
    At the end the VAE decodes the latent into pixels.
    """)
    nb.code("""
    from diffusers import DDIMScheduler

    tok, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # never clip *latents* to [-1, 1]
    scheduler.set_timesteps(SAMPLER_STEPS)

    ids = tok([CLASS_PROMPT, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(DEVICE)
    with torch.no_grad():
        cond, uncond = text_encoder(ids)[0].chunk(2)
        shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(SEEDS[0]))[None].to(DEVICE, DTYPE)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_cond, eps_uncond = unet(x, t, torch.cat([cond, uncond])).sample.chunk(2)
            eps = eps_uncond + GUIDANCE * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        decoded = vae.decode(latents / vae.config.scaling_factor).sample[0]
    by_hand = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    """)
    nb.md("`dbtutor.sample` does the same through the diffusers pipeline, in seeded batches. Same prompt, seed, "
          "steps and scheduler: the same picture.")
    nb.code("""
    import matplotlib.pyplot as plt
    import numpy as np

    from dbtutor.plots import image_grid

    packaged = np.asarray(dbtutor.sample(pipe, CLASS_PROMPT, SEEDS[0], SAMPLER_STEPS, GUIDANCE, scheduler="ddim")[0])
    diff = np.abs(by_hand.astype(int) - packaged.astype(int)).max()
    print(f"largest pixel difference between the loop above and dbtutor.sample: {diff} (of 255)")
    assert diff <= 2
    image_grid([by_hand, packaged], col_labels=["by hand", "dbtutor.sample"], scale=2.0)
    plt.show()
    """)
    nb.md("""
    Guidance trades variety for prompt-following: with `g = 1` the prompt barely steers the sample, large `g`
    follows the prompt harder. Same seed, four guidance scales:
    """)
    nb.code("""
    images = [dbtutor.sample(pipe, "a photo of a red ball on the grass", SEEDS[0], SAMPLER_STEPS, g)[0]
              for g in GUIDANCES]
    image_grid(images, col_labels=[f"guidance {g:g}" for g in GUIDANCES], scale=1.8)
    plt.show()
    """)
    nb.md("""
    ## 3. The prior

    The **prior** of a class is everything the model generates for the bare class prompt: balls of many colours,
    patterns and places. Adding words narrows it. DreamBooth will teach the model one *specific* ball under a
    new word; the prior-preservation loss exists to keep these rows unchanged while it does.
    """)
    nb.code("""
    from dbtutor.widgets import sample_rows

    images = sample_rows(pipe, PRIOR_PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)
    image_grid(images, rows=len(PRIOR_PROMPTS), row_labels=PRIOR_PROMPTS, col_labels=[f"seed {s}" for s in SEEDS])
    plt.show()
    """)
    nb.code(JUDGE)
    nb.md("The prior in numbers: what the judge sees in the samples of the bare class prompt (04 counts more).")
    nb.code("""
    from dbtutor.plots import attribute_bars

    if judge is not None:
        prior = images[:len(SEEDS)]                       # the first row: CLASS_PROMPT
        seen = predict(judge, prior)
        attribute_bars(seen, title=f"{CLASS_PROMPT!r}: {len(prior)} samples, as the judge sees them")
        plt.show()
        share = sum(x == LOOK for x in seen["look"]) / len(prior)
        print(f"samples with the subject's look ({LOOK}): {share:.0%} (the base world never shows it: expect 0%)")
    """)
    nb.md("""
    ## 4. Play

    Change the prompt, the seed, the guidance scale or the number of steps, then press **sample**. The panel
    calls the same `dbtutor.sample` as above. Try words the world knows (colours, `striped`, `dotted`,
    `checkered`, `box`, `cone`, `star`, `ring`, `heart`, `on the beach`, `at night`) and one it does not (`sks`).
    """)
    nb.code("""
    from dbtutor.widgets import sampler_panel

    sampler_panel(pipe, CLASS_PROMPT, seed=SEEDS[0], num=4, guidance=GUIDANCE, steps=SAMPLER_STEPS)
    """)
    nb.md("""
    **Next:** [02 · Instance data and the identifier](02_instance_data_and_identifier.ipynb): the few images of
    our subject, and the word we will teach the model to use for it.
    """)
    return nb


# ----------------------------------------------------------------------------- 02

def nb02() -> Notebook:
    nb = Notebook(
        "02_instance_data_and_identifier.ipynb", "02 · Instance data and the identifier",
        """
        DreamBooth learns a subject from a handful of images (3 to 5) and one prompt,
        `"a photo of [identifier] [class noun]"`. This notebook looks at the images, prepares one by hand, and
        chooses the identifier with the tokenizer.
        """,
        ["what the instance data is and how an image is prepared for training (resize, crop, scale to [-1, 1])",
         "why the prompt pairs a **rare token** with the **class noun**, and how the tokenizer splits candidate "
         "identifiers",
         "whether the text encoder *reads* the identifier: how far it moves the output, next to a colour word, "
         "before and after DreamBooth",
         "how a training batch is laid out: instance examples first, class examples second"],
        """
        # this notebook: identifiers to try (a good one is a single, rarely used token)
        CANDIDATES = ["sks", "ohwx", "zwx", "xyz", "dbtutor", "mybestball", "red", "ball"]
        BATCH_CLASS_IMAGES = 4     # class images made here to show a batch (04 makes the rest, the same ones)
        """)
    nb.md("## 1. The subject")
    nb.code("""
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
    """)
    nb.md("""
    Good instance images show the same subject in **varied** settings (backgrounds, positions, sizes, light):
    what stays the same across them is what the identifier will mean; what varies is left to the prompt.

    ## 2. Preparing an image, by hand

    The model sees a square of `RESOLUTION` pixels with values in [-1, 1]: resize the short side, crop the
    centre, rescale.
    """)
    nb.code("""
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
    """)
    nb.md("""
    ## 3. The identifier

    The instance prompt needs a word for *this* ball. A common word (`red`) already means something and would be
    overwritten; a made-up string (`mybestball`) is cut into familiar pieces (`my`, `best`, `ball`) that also
    mean something. The DreamBooth paper picks a **rare token**: one token of the vocabulary that the model has
    hardly ever seen, such as `sks`. The **class noun** (`ball`) stays in the prompt so the subject can borrow
    everything the model knows about balls (shape, how they sit in a scene), and it names the class whose
    prior we will preserve.
    """)
    nb.code("""
    from transformers import CLIPTokenizer

    from dbtutor.widgets import identifier_report

    tokenizer = CLIPTokenizer.from_pretrained(str(PRETRAINED), subfolder="tokenizer")
    print(f"by hand: {INSTANCE_PROMPT!r} -> {tokenizer.tokenize(INSTANCE_PROMPT)}")
    print(f"{'candidate':12s} {'tokens':32s} pieces")
    for c in CANDIDATES:
        r = identifier_report(tokenizer, c, CLASS_NOUN)
        print(f"{c:12s} {' '.join(t for t, _ in r['identifier_tokens']):32s} {len(r['identifier_tokens'])}")
    assert len(identifier_report(tokenizer, IDENTIFIER, CLASS_NOUN)["identifier_tokens"]) == 1
    """)
    nb.md("""
    (`</w>` marks the end of a word.) Single tokens are not all equally good: `red` and `ball` are single tokens
    too, but frequent ones.

    A rare token is only useful if the text encoder **reads** it: the UNet sees the prompt only through the text
    encoder's output, so a word that leaves that output where it was cannot select anything, however long we
    train. Stable Diffusion's CLIP has read rare words and names on the web ("a photo of a fiat car"), so it
    passes them on. The toy model's captions are mostly attribute words ("a photo of a red striped ball"), but
    some call an object by a rare **name** that stands for one fixed colour and pattern ("a photo of quan ball"),
    as web captions call things by brand and proper names (`dbtutor/toyworld/names.py`; `sks` and `ohwx` are never
    names). How far does a word move the output? By hand, the relative distance between the two prompts'
    text-encoder outputs over every token position, then `dbtutor.text_shift`, which does the same:
    """)
    nb.code("""
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
    """)
    nb.md("""
    Same seeds, both prompts: what `sks` does to the picture before any DreamBooth.
    """)
    nb.code("""
    before = sample_rows(pipe, [INSTANCE_PROMPT, CLASS_PROMPT], SEEDS, SAMPLER_STEPS, GUIDANCE)
    image_grid(before, rows=2, row_labels=[INSTANCE_PROMPT, CLASS_PROMPT], title="the base model, before DreamBooth")
    plt.show()
    """)
    nb.md("""
    `sks` is none of the world's names: it moves the output less than a colour word or a name does, but far
    from nothing, and the pictures show what the base model makes of a word it has never seen (Stable
    Diffusion, too, has its own idea of `sks`). DreamBooth's job (05) is to give it one meaning: the subject.
    Section 5 measures the same distances after training.
    """)
    nb.md("""
    ## 4. A training batch

    With prior preservation every step sees instance images with the instance prompt **and** class images
    (made by the base model, see 04) with the class prompt. `dbtutor.collate` stacks the instance examples
    first and the class examples second, so that `torch.chunk(prediction, 2)` splits the batch into the two
    halves of the loss (see 05). We make a few class images here to look at one batch.
    """)
    nb.code("""
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
    """)
    nb.md("""
    ## 5. After DreamBooth: the identifier means the subject

    We borrow the training run of 05 (the same settings: `MAX_STEPS` steps with prior preservation, the text
    encoder trained too; 05 explains every part of it). Whichever notebook runs first trains it; the other finds
    the finished run in `WORK`. Then the same distances and the same seeds as above:
    """)
    nb.code(OVERRIDES + src("""
    from dbtutor.widgets import train_run

    del pipe
    run = train_run(overrides, WORK)
    shift_after = dict(zip(SHIFT_PROMPTS, dbtutor.text_shift(run.pipe, CLASS_PROMPT, list(SHIFT_PROMPTS.values()))))
    print(f"moved away from {CLASS_PROMPT!r} by        before   after")
    for what, prompt in SHIFT_PROMPTS.items():
        print(f"  {prompt!r:34s} {shift_before[what]:.3f}    {shift_after[what]:.3f}   ({what})")
    after = sample_rows(run.pipe, [INSTANCE_PROMPT, CLASS_PROMPT], SEEDS, SAMPLER_STEPS, GUIDANCE)
    image_grid(before + after, rows=4, row_labels=[f"before: {INSTANCE_PROMPT}", f"before: {CLASS_PROMPT}",
                                                    f"after: {INSTANCE_PROMPT}", f"after: {CLASS_PROMPT}"],
               title=f"the same seeds before and after {MAX_STEPS} DreamBooth steps")
    plt.show()
    """))
    nb.md("""
    Training moved the identifier much further from the bare class than it started: `sks ball` now draws the
    two-tone subject, and `a ball` stays any ball, because prior preservation kept the class prompt's output
    and its pictures where they were. On a text encoder that had learned to ignore rare words (this project's
    earlier base model, trained on attribute words only), the identifier's distance stayed near 0.01 before and
    after, and "sks ball" and "a ball" drew the same picture for every seed.

    ## 6. Play

    Type an identifier and a class noun: the panel shows how the tokenizer splits them and the two prompts
    training would use.
    """)
    nb.code("""
    from dbtutor.widgets import identifier_panel

    identifier_panel(tokenizer, IDENTIFIER, CLASS_NOUN)
    """)
    nb.md("""
    **Next:** [03 · The latent cache](03_latent_cache.ipynb): training happens on VAE latents, not pixels.
    """)
    return nb


# ----------------------------------------------------------------------------- 03

def nb03() -> Notebook:
    nb = Notebook(
        "03_latent_cache.ipynb", "03 · The latent cache",
        """
        The UNet is trained on VAE latents. The VAE's encoder is frozen during DreamBooth, so the latent of an
        image never changes: encode each image once, keep the result, and every training step skips the
        encoder. That is NeMo's `use_cached_latents`.
        """,
        ["how the VAE compresses an image into a latent and back, by hand",
         "what a latent looks like, and how faithful the reconstruction is",
         "`dbtutor.cache_latents`: one entry per image, keyed by its content, the crop and the VAE, so only "
         "what changed is re-encoded",
         "what the cache saves per step, measured"],
        """
        # this notebook: how many timing repeats for the cost comparison
        TIMING_REPEATS = setting("TIMING_REPEATS", 10)
        CACHE_DEMO = WORK / "cache_demo"          # a scratch folder, rebuilt on every run
        """)
    nb.md("## 1. Encode and decode, by hand")
    nb.code("""
    import matplotlib.pyplot as plt
    import numpy as np

    from dbtutor.plots import image_grid, latent_figure

    pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
    vae = pipe.vae
    paths = dbtutor.scan_images(SUBJECT_DIR)
    x = dbtutor.preprocess(dbtutor.load_image(paths[0]), RESOLUTION)[None].to(DEVICE, DTYPE)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist          # a diagonal Gaussian: mean and log-variance
        z = posterior.mean
        recon = vae.decode(z).sample

    def to_image(t):
        return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    print(f"image {tuple(x.shape[1:])} -> latent {tuple(z.shape[1:])}: {x[0].numel() / z[0].numel():.0f}x fewer numbers")
    print(f"latent std {z.std():.3f}; times the VAE's scaling_factor {vae.config.scaling_factor}: "
          f"{(z * vae.config.scaling_factor).std():.3f} (the diffusion model expects about 1)")
    latent_figure(to_image(x[0]), z[0], to_image(recon[0]))
    plt.show()
    """)
    nb.md("All instance images and their reconstructions: the VAE is lossy, and the model can never draw finer "
          "detail than its VAE decodes.")
    nb.code("""
    with torch.no_grad():
        xs = torch.stack([dbtutor.preprocess(dbtutor.load_image(p), RESOLUTION) for p in paths]).to(DEVICE, DTYPE)
        rs = vae.decode(vae.encode(xs).latent_dist.mean).sample
    mse = ((rs.float() - xs.float()) ** 2).mean().item()
    print(f"reconstruction MSE {mse:.4f}, PSNR {10 * np.log10(4 / mse):.1f} dB")
    image_grid([to_image(t) for t in torch.cat([xs, rs])], rows=2, row_labels=["original", "decoded"], scale=1.4)
    plt.show()
    """)
    nb.md("""
    ## 2. The cache

    `dbtutor.cache_latents` does the encoding above for a list of images and stores each latent distribution
    (mean and log-variance, as safetensors) under a key = hash(image bytes, resolution, crop, VAE weights).
    Training draws `mean + std * noise` from it at every step, as NeMo does. Same numbers as by hand:
    """)
    nb.code("""
    import shutil

    shutil.rmtree(CACHE_DEMO, ignore_errors=True)
    image_dir, cache_dir = CACHE_DEMO / "images", CACHE_DEMO / "latents"
    image_dir.mkdir(parents=True)
    for p in paths:
        shutil.copy(p, image_dir / p.name)
    demo_paths = dbtutor.scan_images(image_dir)

    c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
    print(f"first call: {len(c['encoded'])} encoded, {len(c['reused'])} reused; mean {tuple(c['mean'].shape)}")
    assert torch.allclose(c["mean"][0].to(z.device), z[0].float(), atol=1e-4), "cache and hand encoding disagree"
    print("cached mean == the latent encoded by hand")

    c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
    print(f"second call: {len(c['encoded'])} encoded, {len(c['reused'])} reused")
    assert not c["encoded"]
    """)
    nb.md("Edit one image (here: mirror it) and only that one is encoded again; the others are reused. A new "
          "resolution, another crop or another VAE would re-encode everything.")
    nb.code("""
    from PIL import ImageOps

    ImageOps.mirror(dbtutor.load_image(demo_paths[0])).save(demo_paths[0])
    c = dbtutor.cache_latents(demo_paths, cache_dir, vae, RESOLUTION, center_crop=True)
    print(f"after editing {demo_paths[0].name}: {len(c['encoded'])} encoded, {len(c['reused'])} reused")
    assert [p.name for p in c["encoded"]] == [demo_paths[0].name]
    print((cache_dir / "manifest.json").read_text()[:400], "...")
    """)
    nb.md("""
    ## 3. What the cache saves

    Without the cache, each step encodes its images (1 instance + 1 class image per step here). With it, a step
    only draws from the stored Gaussian. Measured on this machine:
    """)
    nb.code("""
    import time

    from dbtutor.latent_cache import sample_latents
    from dbtutor.plots import bar_chart

    batch = xs[:2]
    with torch.no_grad():
        vae.encode(batch)                          # warm up
        t0 = time.perf_counter()
        for _ in range(TIMING_REPEATS):
            online = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
        t_online = (time.perf_counter() - t0) / TIMING_REPEATS
        t0 = time.perf_counter()
        for _ in range(TIMING_REPEATS):
            cached = sample_latents(c["mean"][:2], c["logvar"][:2]) * vae.config.scaling_factor
        t_cached = (time.perf_counter() - t0) / TIMING_REPEATS
    print(f"per step: encode {t_online * 1e3:.1f} ms, cached draw {t_cached * 1e3:.3f} ms; "
          f"over {MAX_STEPS} steps: {t_online * MAX_STEPS:.1f} s vs {t_cached * MAX_STEPS:.2f} s")
    bar_chart({"encode every step": t_online * 1e3, "cached latents": t_cached * 1e3}, "ms per training step",
              "latents for one step (1 instance + 1 class image)", fmt="{:.2f}")
    plt.show()
    """)
    nb.md("""
    On the toy model the encoder is small; for SD v1.5 at 512 px it is a large share of each step, and the
    cache also removes the encoder from GPU memory during training. The price: a cache holds one crop per image,
    so `use_cached_latents` needs `center_crop=true` (random crops need online encoding).

    **Next:** [04 · Regularization images](04_regularization_images.ipynb).
    """)
    return nb


# ----------------------------------------------------------------------------- 04

def nb04() -> Notebook:
    nb = Notebook(
        "04_regularization_images.ipynb", "04 · Regularization images",
        """
        Prior preservation needs examples of the class *as the base model draws it*: the regularization (class)
        images. They are generated once, before training, from the class prompt; during training the model must
        keep predicting their noise as it did, while it learns the subject.
        """,
        ["what class images are and how `dbtutor.generate_regularization` makes them (NeMo's contract: only what "
         "is missing, up to `num_reg_images`)",
         "that each class image depends only on its index and the seed, so a folder can be filled in pieces",
         "what they contain: the class prior, counted by the judge",
         "how many to make and what they cost (a `num_reg_images` slider)"],
        """
        # this notebook: how many class images the slider panel starts with (it uses its own folder)
        EXPLORE_REG_IMAGES = setting("EXPLORE_REG_IMAGES", 8)
        """)
    nb.code(OVERRIDES + '\ncfg = dbtutor.load_config(overrides={**overrides, "output_dir": str(WORK / "runs" / "unused")})')
    nb.md("""
    ## 1. One class image, by hand

    A class image is a sample of the class prompt. `generate_regularization` seeds image number `i` with
    `reg_seed(seed, i)`, so here is image 0, by hand:
    """)
    nb.code("""
    import matplotlib.pyplot as plt
    import numpy as np

    from dbtutor.plots import image_grid
    from dbtutor.regularization import PATTERN, count_images, reg_seed

    pipe = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
    s = cfg.model.sampling
    first = dbtutor.sample(pipe, CLASS_PROMPT, reg_seed(SEED, 0), s.num_inference_steps, s.guidance_scale,
                           scheduler=s.scheduler)[0]
    """)
    nb.md("""
    ## 2. The whole folder, with the package

    NeMo's rule: if `regularization_dir` holds fewer than `num_reg_images` images, generate the missing ones
    with `regularization_prompt`, `num_images_per_prompt` at a time; otherwise generate nothing. dbtutor never
    overshoots and writes each file atomically, so an interrupted run resumes with the same images.
    """)
    nb.code("""
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
    """)
    nb.code("""
    paths = sorted(REG_DIR.glob("class_*.png"))
    shown = [dbtutor.load_image(p) for p in paths[:24]]
    image_grid(shown, rows=max(1, len(shown) // 8), title=f"{CLASS_PROMPT!r}: {len(shown)} of {len(paths)} class images")
    plt.show()
    """)
    nb.md("## 3. What the class images contain")
    nb.code(JUDGE)
    nb.code("""
    from dbtutor.plots import attribute_bars

    if judge is not None:
        seen = predict(judge, [dbtutor.load_image(p) for p in paths])
        attribute_bars(seen, title=f"{len(paths)} class images, as the judge sees them")
        plt.show()
        print(f"with the subject's look: {sum(x == LOOK for x in seen['look'])} of {len(paths)}")
    """)
    nb.md("""
    This spread of colours, patterns and scenes is the prior that training must keep. If the class images were
    all alike, the model could only preserve that one kind of ball.

    ## 4. How many?

    More class images cover more of the prior, and cost more to generate (once); training cost per step does
    not change. NeMo's example config uses 10; diffusers' DreamBooth script defaults to 100. With few images, the
    prior half of each batch keeps repeating the same examples. What they cost on this machine:
    """)
    nb.code("""
    per_image = seconds / max(len(written), 1) if written else None
    if per_image:
        for n in (10, 50, 100, 200, 1000):
            print(f"{n:5d} class images: {n * per_image / 60:5.1f} min")
    else:
        print("the folder was already full (made by an earlier run): nothing was timed")
    """)
    nb.md("""
    ## 5. Play

    Move the slider and press the button: the panel calls `generate_regularization` with that `num_reg_images`
    on a separate folder (so the training notebooks keep using exactly `NUM_REG_IMAGES`), and shows it. Going
    down generates nothing: a folder that holds enough is left alone.
    """)
    nb.code("""
    from dbtutor.widgets import reg_images_panel

    reg_images_panel(overrides, WORK / "reg" / f"{REG_DIR.name}-explore", pipe, num=EXPLORE_REG_IMAGES)
    """)
    nb.md("""
    **Next:** [05 · Training with prior preservation](05_training_with_prior_preservation.ipynb).
    """)
    return nb


# ----------------------------------------------------------------------------- 05

def nb05() -> Notebook:
    nb = Notebook(
        "05_training_with_prior_preservation.ipynb", "05 · Training with prior preservation",
        """
        Now we teach the model the subject. Each step puts the instance images and the class images through the
        model together; the loss is the usual noise-prediction error on the instance half **plus**
        `prior_loss_weight` times the same error on the class half.
        """,
        ["one training step by hand: latents, noise, timesteps, text embeddings, the UNet's prediction",
         "the prior-preservation loss written with `torch.chunk` and `F.mse_loss`, checked against "
         "`dbtutor.dreambooth_loss` (NeMo's formula)",
         "training with `dbtutor.train`, and reading the instance and prior loss curves",
         "what the trained model draws for the subject and for the bare class"],
        """
        # this notebook: nothing more; the training settings are above
        """)
    nb.code(OVERRIDES + src("""
    from dbtutor.widgets import run_config

    cfg = run_config(overrides, WORK)      # output_dir is named after the whole config: reruns reuse the run
    print("output_dir:", cfg.output_dir)
    """))
    nb.md("""
    ## 1. One step, by hand

    We need the class images (04 made them; this fills the folder if you start here) and the cached latents
    (03). Then, for one instance image and one class image: draw the latent, add noise at a random timestep,
    and let the UNet predict that noise from the noisy latent and the prompt.
    """)
    nb.code("""
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
    """)
    nb.md("The loss, by hand: split the batch into its instance and class halves.")
    nb.code("""
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
    """)
    nb.md("""
    ## 2. Training, with the package

    `dbtutor.train(cfg)` repeats that step `MAX_STEPS` times with AdamW, also training the text encoder
    (`train_text_encoder`), and adds what a real run needs: class images and latent cache made if missing,
    learning-rate warmup, gradient clipping, checkpoints it can resume from, and a saved diffusers pipeline.
    The output folder is named after the config, so running this cell again (or 06 later) finds the finished
    run instead of training again.
    """)
    nb.code("""
    result = dbtutor.train(cfg)
    last = result.history[-1]
    print(f"{len(result.history)} steps ({result.seconds:.0f} s this call); last instance loss "
          f"{last['instance_loss']:.4f}, prior loss {last['prior_loss']:.4f}")
    print("saved pipeline:", sorted(p.name for p in result.output_dir.iterdir()))
    """)
    nb.code("""
    import matplotlib.pyplot as plt

    from dbtutor.plots import loss_curves

    loss_curves({f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})": result.history}, smooth=20)
    plt.show()
    """)
    nb.md("""
    Each step draws its own timestep, and the noise-prediction error depends mostly on the timestep, so the
    curves are noisy even after smoothing. The **instance loss** falls as the model fits the few subject images;
    the **prior loss** should stay about where it started: the model still predicts its own class samples.
    If the prior loss climbs, the class is drifting.

    ## 3. What the trained model draws
    """)
    nb.code("""
    from dbtutor.plots import image_grid
    from dbtutor.widgets import sample_rows

    rows = [INSTANCE_PROMPT] + PROMPTS
    images = sample_rows(result.pipe, rows, SEEDS, SAMPLER_STEPS, GUIDANCE)
    image_grid(images, rows=len(rows), row_labels=rows, title=f"after {MAX_STEPS} steps with prior preservation")
    plt.show()
    """)
    nb.code(JUDGE)
    nb.code("""
    from dbtutor.widgets import judge_scores

    if judge is not None:
        k = len(SEEDS)
        scores = judge_scores(judge, images[:2 * k], images[2 * k:], LOOK)
        print(f"subject fidelity {scores['subject_fidelity']:.2f} (share of 'sks' samples with the subject's look); "
              f"class drift {scores['class_drift']:.2f} (share of {CLASS_PROMPT!r} samples with it)")
    """)
    nb.md("""
    ## 4. Play

    Sample the trained model with your own prompts: `a photo of sks ball on the beach`, `... at night`, or the
    bare class.
    """)
    nb.code("""
    from dbtutor.widgets import sampler_panel

    sampler_panel(result.pipe, PROMPTS[0], seed=SEEDS[0], num=4, guidance=GUIDANCE, steps=SAMPLER_STEPS)
    """)
    nb.md("""
    **Next:** [06 · With and without prior preservation](06_with_and_without_prior.ipynb): the same training
    without the class half of the loss, and what it does to "a photo of a ball".
    """)
    return nb


# ----------------------------------------------------------------------------- 06

def nb06() -> Notebook:
    nb = Notebook(
        "06_with_and_without_prior.ipynb", "06 · With and without prior preservation",
        """
        Fine-tune on five photos of one ball and the model may start to believe that *every* ball looks like it:
        **language drift** (the class word drifts toward the subject). The prior-preservation loss is the cure.
        Here we train with and without it, and compare the same prompts and seeds side by side.
        """,
        ["language drift: without prior preservation, \"a photo of a ball\" turns into the subject",
         "its cure: with prior preservation, the class keeps its variety while the subject is learned",
         "how `prior_loss_weight` trades subject fidelity against class preservation (a sweep)",
         "retraining with another weight and steps from a widget, and seeing the result"],
        """
        # this notebook: prior_loss_weight values of the sweep (DBTUTOR_NB_SWEEP_WEIGHTS=0,0.3,1);
        # λ=0 is the run without prior preservation (see below), λ=PRIOR_LOSS_WEIGHT the run of 05
        SWEEP_WEIGHTS = setting("SWEEP_WEIGHTS", [0.0, 0.3, 1.0])
        """)
    nb.code(OVERRIDES + src("""
    import matplotlib.pyplot as plt

    from dbtutor.plots import comparison_grid, image_grid, loss_curves, save_figure, sweep_plot
    from dbtutor.widgets import judge_scores, run_config, sample_rows, train_run
    """))
    nb.md("## 1. The base model, before training")
    nb.code("""
    base = dbtutor.load_pipeline(PRETRAINED, device=DEVICE, dtype=DTYPE)
    samples = {"base model": sample_rows(base, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)}
    del base
    """)
    nb.md("""
    ## 2. Train without and with prior preservation

    The two runs differ in one key, `model.with_prior_preservation`. Everything else (steps, learning rate,
    seed, the text encoder trained too) is the same. `train_run` calls `dbtutor.train` with an output folder
    named after the config: the run with prior preservation is the one 05 made, found and reused if it exists.
    """)
    nb.code("""
    without = dbtutor.train(run_config({**overrides, "model.with_prior_preservation": False}, WORK))
    samples["without prior preservation"] = sample_rows(without.pipe, PROMPTS, SEEDS, SAMPLER_STEPS, GUIDANCE)
    without.pipe = None
    with_prior = train_run(overrides, WORK)
    samples[f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})"] = sample_rows(with_prior.pipe, PROMPTS, SEEDS,
                                                                                 SAMPLER_STEPS, GUIDANCE)
    with_prior.pipe = None
    """)
    nb.md("""
    ## 3. Side by side

    Same prompts, same seeds, three models. Top row: the subject in a new context. Bottom row: the bare class.
    Look for the bottom row of the middle block: without prior preservation the balls become the two-tone
    subject. With it, they keep the base model's variety.
    """)
    nb.code("""
    fig = comparison_grid(samples, PROMPTS, len(SEEDS), title=f"{MAX_STEPS} steps each; same prompts and seeds")
    save_figure(fig, WORK / "figures" / "with_and_without_prior.png")   # closes the figure; shown below
    from IPython.display import Image, display
    display(Image(filename=str(WORK / "figures" / "with_and_without_prior.png")))
    """)
    nb.code("""
    loss_curves({"without prior preservation": without.history,
                 f"with prior preservation (λ={PRIOR_LOSS_WEIGHT:g})": with_prior.history})
    plt.show()
    """)
    nb.md("""
    Without prior preservation there is no prior loss to plot (it is zero). With it, the prior loss tells you
    whether the model still predicts its own class samples.

    ## 4. Measuring drift

    The judge tells us which samples show the subject's look. First by hand, for the bare class prompt:
    """)
    nb.code(JUDGE)
    nb.code("""
    k = len(SEEDS)
    if judge is not None:
        for name, images in samples.items():
            looks = predict(judge, images[k:])["look"]                    # the bare-class row
            print(f"{name:32s} {CLASS_PROMPT!r}: {looks.count(LOOK)} of {k} samples look like the subject")
        scores = {name: judge_scores(judge, images[:k], images[k:], LOOK) for name, images in samples.items()}
        for name, s in scores.items():
            assert abs(s["class_drift"] - predict(judge, samples[name][k:])["look"].count(LOOK) / k) < 1e-9
            print(f"{name:32s} subject fidelity {s['subject_fidelity']:.2f}   class drift {s['class_drift']:.2f}")
    """)
    nb.md("""
    ## 5. The `prior_loss_weight` sweep

    λ scales the class half of the loss. λ = 0 gives the class half no gradient at all, so it *is* training
    without prior preservation (the same instance draws and updates, up to rounding): we reuse that run. Larger λ holds the class
    more firmly, and can slow down learning the subject.
    """)
    nb.code("""
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
    """)
    nb.md("""
    With few samples per prompt each point is coarse (steps of 1/8); raise `SAMPLES_PER_PROMPT` and add weights
    to `SWEEP_WEIGHTS` for a smoother curve.

    ## 6. Play: retrain and redraw

    Pick a `prior_loss_weight` and a number of steps, press **retrain and redraw**: the panel calls
    `dbtutor.train` with those overrides (a new output folder per setting; settings already trained are reused)
    and redraws the comparison with the same prompts and seeds. It starts with this notebook's settings.
    """)
    nb.code("""
    from dbtutor.widgets import prior_weight_panel

    reference = {"base model": samples["base model"], "without prior preservation": samples["without prior preservation"]}
    prior_weight_panel(overrides, WORK, PROMPTS, SEEDS, reference, weight=PRIOR_LOSS_WEIGHT, steps=MAX_STEPS,
                       sampler_steps=SAMPLER_STEPS, guidance=GUIDANCE, judge=judge, look=LOOK)
    """)
    nb.md("""
    **Next:** [07 · Going further](07_going_further.ipynb): the text encoder, LoRA, several GPUs, and Stable
    Diffusion v1.5 with your own photos.
    """)
    return nb


# ----------------------------------------------------------------------------- 07

def nb07() -> Notebook:
    nb = Notebook(
        "07_going_further.ipynb", "07 · Going further",
        """
        The same recipe scales from the toy world to Stable Diffusion v1.5. This notebook looks at the switches
        that matter on the way: training the text encoder or not, LoRA adapters instead of full fine-tuning,
        several GPUs, and the settings for real photos.
        """,
        ["what `train_text_encoder` changes, in trainable parameters and in what the identifier means",
         "LoRA (`model.lora.rank`): a few adapter weights instead of the whole UNet, loadable with stock diffusers",
         "data-parallel training on several GPUs with `accelerate launch`",
         "moving to Stable Diffusion v1.5 on a GPU with your own photos (`data/dog6`, 512 px)"],
        """
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
        """)
    nb.code(OVERRIDES + src("""
    import matplotlib.pyplot as plt

    from dbtutor.plots import bar_chart, comparison_grid, image_grid
    from dbtutor.widgets import run_config, sample_rows, train_run
    """))
    nb.md("""
    ## 1. What is trained

    By hand: count the weights of the UNet and the text encoder. Then ask the package what each setting trains
    (`dbtutor.lora.trainable_parameters`, after `add_lora` for LoRA).
    """)
    nb.code("""
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
    """)
    nb.md("""
    ## 2. `train_text_encoder`

    The identifier only means something if the text encoder turns "sks ball" into something different from
    "a ball". A frozen text encoder gives the two prompts nearly the same embedding (see 02), so the UNet
    alone must tell them apart, and with prior preservation it is pulled both ways. Training the text encoder
    lets the identifier move away from the class word. Measured on the run of 05 (reused if it exists):
    """)
    nb.code("""
    import torch.nn.functional as F

    def prompt_similarity(p):
        ids = p.tokenizer([INSTANCE_PROMPT, CLASS_PROMPT], padding="max_length", truncation=True,
                          max_length=p.tokenizer.model_max_length, return_tensors="pt").input_ids.to(p.device)
        with torch.no_grad():
            e = p.text_encoder(ids)[0].float().flatten(1)
        return F.cosine_similarity(e[0], e[1], dim=0).item()

    trained = train_run(overrides, WORK)
    print(f"similarity of {INSTANCE_PROMPT!r} and {CLASS_PROMPT!r} (text encoder output): "
          f"base {prompt_similarity(pipe):.3f}, after DreamBooth {prompt_similarity(trained.pipe):.3f}")
    trained.pipe = None
    """)
    nb.md("""
    With a large pretrained text encoder (SD v1.5's CLIP) the rare token already has its own embedding, and
    NeMo's default is `train_text_encoder: False`; it saves memory and often suffices there. Try
    `TRAIN_TEXT_ENCODER = False` in the parameters cell and rerun 05 and 06 to see the trade-off on the toy model.

    ## 3. LoRA

    `model.lora.rank > 0` freezes the base weights and trains low-rank adapters on the attention projections
    (with peft). The result is a small `pytorch_lora_weights.safetensors` that stock diffusers loads onto the
    base model with `load_lora_weights`. A short run:
    """)
    nb.code("""
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
    """)
    nb.md("""
    ## 4. Several GPUs

    `dbtutor train` runs under `accelerate launch`: each process takes its share of the class images to
    generate and its slice of every global batch (data parallel, NeMo's "Data parallelism"); `trainer.batch_size`
    is per process, so N processes with batch B train like one process with batch N·B. The commands for this
    notebook's settings (`dbtutor.cli.launch_commands`):
    """)
    nb.code("""
    import shlex

    from dbtutor.cli import build_parser, launch_commands

    keys = {k: v for k, v in overrides.items() if k not in ("trainer.device", "trainer.precision")}
    args = ["train"] + [f"{k}={v}" for k, v in keys.items()] + ["output_dir=work/runs/multi_gpu"]
    for where, command in launch_commands(args, gpus=NUM_GPUS, machines=NUM_MACHINES).items():
        print(f"# {where}\\n{command}\\n")
    ns = build_parser().parse_args(args)                          # the command parses,
    dbtutor.load_config(ns.config, ns.overrides)                  # and its keys are valid
    """)
    nb.md("""
    Several machines need `output_dir` and the class-image and cache folders on a shared file system; the main
    process builds the latent cache while the others wait, and only it writes checkpoints and the output.
    """)
    nb.md("""
    ## 5. Stable Diffusion v1.5 with your own photos

    On a GPU (Colab: *Runtime → Change runtime type → GPU*), change the parameters cell of any notebook to the
    values in `GPU` above: `PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"`, `SUBJECT_DIR` = a folder
    of 3-5 photos of your subject (here `data/dog6`, the DreamBooth paper's dog), the identifier and class noun
    (`sks`, `dog`), `RESOLUTION = 512`. Tips: vary backgrounds and poses in your photos; crop them so the
    subject fills the centre; 200 class images and 400-800 steps are a good start; full fine-tuning needs
    about 24 GB, LoRA fits a 16 GB card. The cell below does all of that, only when a CUDA GPU is present.
    """)
    nb.code("""
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
    """)
    nb.md("""
    The command line does the same: `dbtutor train model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5
    model.data.instance_dir=data/dog6 "model.data.instance_prompt=a photo of sks dog"
    "model.data.regularization_prompt=a photo of a dog" model.data.resolution=512 trainer.precision=16
    model.lora.rank=16`, then `dbtutor sample --prompt "a photo of sks dog on the beach" ...`.

    That is the course: the prior (01), the subject and its word (02), latents (03), class images (04), the loss
    and training (05), drift and its cure (06), and the switches for real models (07).
    """)
    return nb


NOTEBOOKS = [nb01, nb02, nb03, nb04, nb05, nb06, nb07]


def render_all() -> dict[str, str]:
    """{file name: notebook JSON text} for every course notebook."""
    out = {}
    for make in NOTEBOOKS:
        nb = make()
        out[nb.name] = nb.build()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the files in notebooks/")
    args = ap.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = NB_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print("wrote", path.relative_to(ROOT))
    if stale:
        print("out of date (run python tools/build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
