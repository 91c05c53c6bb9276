"""Samples along the way: the same prompts and seeds every trainer.validation.every steps, saved, scored and drawn.

At step 0 (the base model), every `every` steps and at the last step, the main process samples each validation
prompt at the fixed seeds (model.sampling's scheduler, steps and guidance) and writes into output_dir/validation:

    step_000100.png   that step's images: one row per prompt, one column per seed, each image at full size
    validation.json   the settings (prompts, seeds, sampler) and per validation its step, picture and scores
    strip.png         every validation so far: prompt x seed down, steps across (kept up to date)

Scores, where something can measure: on a toy-world subject (subject.json) the world's judge, per prompt the share
of samples it judges to show the subject's look ("a photo of sks ball": the subject arrives; "a photo of a ball":
the class drifts); on real photos DINO similarity to the instance images (and CLIP-I where CLIP is there too), if
DINOv2 is on this machine (nothing is downloaded here: the course fetches it before its runs). Sampling has its own
generators and leaves the global random state, the pipeline's scheduler and the modules' train/eval modes as they
were: the training itself does not change.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..core.errors import DataError
from ..core.fileio import save_image, write_json
from .tracking import Trackers

FOLDER, RECORD, STRIP = "validation", "validation.json", "strip.png"
SEED = 500_000                  # dbtutor eval's seeds: far from the class images' (trainer.seed * 1_000_003 + i)
RECONTEXT = "on the snow"       # the default recontextualisation: "<instance prompt> on the snow"
STRIP_TILE = 128                # at most this many pixels per image in strip.png (SD's 512 px samples shrink)


def validation_prompts(cfg) -> list[str]:
    """trainer.validation.prompts, or by default the instance prompt, it on the snow, and the class prompt."""
    d = cfg.model.data
    if cfg.trainer.validation.prompts:
        return [str(p) for p in cfg.trainer.validation.prompts]
    return [d.instance_prompt, f"{d.instance_prompt} {RECONTEXT}"] + ([d.regularization_prompt]
                                                                     if d.regularization_prompt else [])


def settings(cfg) -> dict:
    """What makes two validations comparable: prompts, seeds, sampler, and the training config."""
    from .same_run import training_config
    s, d = cfg.model.sampling, cfg.model.data
    return json.loads(json.dumps({
        "prompts": validation_prompts(cfg), "seeds": [SEED + i for i in range(cfg.trainer.validation.num_images)],
        "instance_prompt": d.instance_prompt, "class_prompt": d.regularization_prompt or None,
        "scheduler": s.scheduler, "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
        "config": training_config(cfg)}))


def make_scorer(cfg, device="cpu"):
    """(name, score(images by prompt) -> {prompt: {metric: value}}, note): the judge on a toy-world subject; on real
    photos DINO similarity (DINOv2, DBTUTOR_DINO_MODEL), plus CLIP-I where CLIP is on this machine too, from local
    weights only (the course fetches DINOv2 before its runs: measure.fetch); else (None, None, why not)."""
    from ..measuring.encoders import Encoders, model_names
    from ..measuring.evaluate import DEFAULT_JUDGE, cross_similarity, resize_all
    subject = Path(cfg.model.data.instance_dir)
    if (subject / "subject.json").exists():
        from ..toyworld import judge as J
        from ..toyworld.world import SIZE
        try:
            judge = J.load_judge(DEFAULT_JUDGE)
        except (FileNotFoundError, ValueError) as e:
            return None, None, f"the toy world's judge cannot be loaded ({e})"
        look = json.loads((subject / "subject.json").read_text())["look"]

        def by_judge(images: dict) -> dict:
            return {p: {"look_share": sum(x == look for x in J.predict(judge, resize_all(ims, SIZE))["look"]) / len(ims)}
                    for p, ims in images.items()}
        return "judge", by_judge, f"the judge's share of samples with the subject's look ({look})"
    names = model_names()
    enc = Encoders(names["clip"], names["dino"], device, local_files_only=True, load=())
    if not enc.available("dino"):
        return None, None, f"{names['dino']} is not on this machine (it is never downloaded here)"
    from ..core.images import load_image, scan_images
    real = [load_image(p) for p in scan_images(subject, "model.data.instance_dir")]
    clip = enc.available("clip")                    # CLIP-I too, only where CLIP is here already
    d_real, c_real = enc.dino_images(real), enc.clip_images(real) if clip else None

    def by_encoders(images: dict) -> dict:
        return {p: {"dino": cross_similarity(enc.dino_images(ims), d_real),
                    **({"clip_i": cross_similarity(enc.clip_images(ims), c_real)} if clip else {})}
                for p, ims in images.items()}
    return "clip", by_encoders, "DINO " + ("and CLIP-I " if clip else "") + \
        "similarity of each prompt's samples to the instance images"


def mosaic(images: list, rows: int) -> Image.Image:
    """Images side by side, row after row, no gaps: each can be cut back out exactly (see load_validations)."""
    w, h = images[0].size
    cols = len(images) // rows
    out = Image.new("RGB", (cols * w, rows * h))
    for k, im in enumerate(images):
        out.paste(im.convert("RGB"), ((k % cols) * w, (k // cols) * h))
    return out


def cut(picture: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    w, h = picture.width // cols, picture.height // rows
    return [picture.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(cols)]


def strip(folder: Path, records: list[dict], prompts: list[str], seeds: list[int], gap: int = 2) -> Image.Image:
    """strip.png: one row per (prompt, seed), one column per validation step, labelled; a gap between steps and
    between prompts."""
    pictures = [cut(Image.open(Path(folder) / r["image"]).convert("RGB"), len(prompts), len(seeds)) for r in records]
    size = min(pictures[0][0].width, STRIP_TILE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w, head = int(max(measure.textlength(p) for p in prompts + ["seed 0000000"])) + 8, 14
    x = [label_w + c * (size + gap) for c in range(len(records))]
    y = [head + k * size + (k // len(seeds)) * gap for k in range(len(prompts) * len(seeds))]
    out = Image.new("RGB", (x[-1] + size, y[-1] + size), "white")
    draw = ImageDraw.Draw(out)
    draw.text((4, 2), "step", fill="black")
    for c, (r, tiles) in enumerate(zip(records, pictures)):
        draw.text((x[c] + 2, 2), str(r["step"]), fill="black")
        for k, tile in enumerate(tiles):
            out.paste(tile.resize((size, size), Image.BICUBIC) if tile.width != size else tile, (x[c], y[k]))
    for k in range(len(prompts) * len(seeds)):
        p, s = divmod(k, len(seeds))
        if s == 0:
            draw.text((4, y[k] + 2), prompts[p], fill="black")
        draw.text((4, y[k] + 14), f"seed {seeds[s]}", fill="gray")
    return out


class Validator:
    """Validations of one training run (and its trackers). train() calls it at its first step and after every step."""

    def __init__(self, cfg, pipe, accelerator, start: int = 0, finished: bool = False):
        v = cfg.trainer.validation
        self.cfg, self.pipe, self.accelerator = cfg, pipe, accelerator
        self.every, self.last = (0 if finished else v.every), cfg.trainer.max_steps
        self.main = accelerator.is_main_process
        self.folder = Path(cfg.output_dir) / FOLDER
        self.settings = settings(cfg)
        self.records, self.scorer, self.scorer_name, self.note = [], None, None, ""
        self.made = []                              # the steps this process sampled (only the main one samples)
        if self.main and self.every:
            self.records = self._kept(start)
            with torch.random.fork_rng(devices=[]):     # building the judge or encoders draws random weights
                self.scorer_name, self.scorer, note = make_scorer(cfg, accelerator.device)
            self.note = note if self.scorer else f"no scores: {note}"
            if not self.scorer:
                print(f"validation: {self.note}")
        self.trackers = Trackers(cfg, accelerator, start, active=not finished)    # finished: nothing to log

    def _kept(self, start: int) -> list[dict]:
        """The validations a resumed run keeps: those up to its start step, made with the same settings."""
        try:
            data = json.loads((self.folder / RECORD).read_text())
        except (OSError, ValueError):
            data = None
        if start and data and data.get("settings") != self.settings:
            moved = self.folder.with_name(FOLDER + ".old")
            shutil.rmtree(moved, ignore_errors=True)
            os.replace(self.folder, moved)
            print(f"validation: other prompts, seeds or sampler than the earlier validations; those are in {moved}")
            return []
        if not start or not data:                    # a new run: earlier validations in output_dir were another's
            shutil.rmtree(self.folder, ignore_errors=True)
            return []
        return [r for r in data["validations"] if r["step"] <= start and (self.folder / r["image"]).exists()]

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.last)

    def step(self, rec: dict) -> None:
        """After a training step: log its losses and learning rate, and validate if it is a validation step."""
        self.trackers.scalars({k: rec[k] for k in ("loss", "instance_loss", "prior_loss", "lr")}, rec["step"])
        self(rec["step"])

    def __call__(self, step: int) -> None:
        if not self.due(step):
            return
        if self.main and all(r["step"] != step for r in self.records):
            self._validate(step)
        self.accelerator.wait_for_everyone()         # the other processes wait while the main one samples

    def sample(self) -> list[Image.Image]:
        """Every prompt at every seed, prompt after prompt, from the model as it is now (LoRA adapters active)."""
        from ..models.pipeline import sample
        s, prompts, seeds = self.cfg.model.sampling, self.settings["prompts"], self.settings["seeds"]
        pipe = self.pipe
        modes = {m: m.training for m in (pipe.unet, pipe.text_encoder, pipe.vae)}
        scheduler = pipe.scheduler                  # sample() swaps in the sampler; the saved pipeline keeps its own
        cuda = [pipe.unet.device.index or 0] if pipe.unet.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), self.accelerator.autocast():
                for m in modes:
                    m.eval()
                return sample(pipe, [p for p in prompts for _ in seeds], seeds * len(prompts), s.num_inference_steps,
                              s.guidance_scale, s.scheduler, batch_size=self.cfg.model.data.num_images_per_prompt)
        finally:
            pipe.scheduler = scheduler
            for m, was in modes.items():
                m.train(was)

    def _validate(self, step: int) -> None:
        t0 = time.time()
        prompts, seeds = self.settings["prompts"], self.settings["seeds"]
        try:
            images = self.sample()
        except torch.cuda.OutOfMemoryError as e:     # samples are worth less than the run: it goes on without them
            self.every = 0
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"validation stopped at step {step}, the GPU is out of memory ({str(e).splitlines()[0]}): "
                          "training goes on; set trainer.validation.num_images lower, or every=0", stacklevel=2)
            return
        self.made.append(step)
        picture = mosaic(images, len(prompts))
        name = f"step_{step:06d}.png"
        save_image(picture, self.folder / name)
        by_prompt = {p: images[k * len(seeds):(k + 1) * len(seeds)] for k, p in enumerate(prompts)}
        scores = self.scorer(by_prompt) if self.scorer else {}
        self.records = sorted([r for r in self.records if r["step"] != step] +
                              [{"step": step, "image": name, "scores": scores, "seconds": round(time.time() - t0, 3)}],
                              key=lambda r: r["step"])
        write_json(self.folder / RECORD, {"settings": self.settings, "scorer": self.scorer_name, "scores": self.note,
                                          "validations": self.records})
        save_image(strip(self.folder, self.records, prompts, seeds), self.folder / STRIP)
        self.trackers.picture("validation", picture, step, caption=" | ".join(prompts))
        self.trackers.scalars({f"validation/{p}/{m}": v for p, ms in scores.items() for m, v in ms.items()}, step)

    def close(self) -> None:
        self.trackers.close()


@dataclass
class ValidationRun:
    """The validations of one run, as load_validations reads them back."""
    output_dir: Path
    prompts: list[str]
    seeds: list[int]
    instance_prompt: str | None = None
    class_prompt: str | None = None
    scorer: str | None = None                   # "judge", "clip" or None (no scores)
    records: list[dict] = field(default_factory=list)   # per step: step, images {prompt: [one per seed]}, scores

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.records]

    def at(self, step: int) -> dict:
        for r in self.records:
            if r["step"] == step:
                return r
        raise KeyError(f"{self.output_dir} has no validation at step {step}; it has {self.steps}")

    def shares(self, prompt: str, metric: str = "look_share") -> list[float]:
        """One score of one prompt over the steps (nan where it was not scored)."""
        return [r["scores"].get(prompt, {}).get(metric, float("nan")) for r in self.records]


def load_validations(output_dir) -> ValidationRun:
    """The validations a training run made: steps, images per prompt and seed, and scores."""
    folder = Path(output_dir) / FOLDER
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder / RECORD} cannot be read ({type(e).__name__}): train with "
                        "trainer.validation.every > 0 to make validations") from None
    s = data["settings"]
    prompts, seeds = s["prompts"], s["seeds"]
    records = []
    for r in data["validations"]:
        tiles = cut(Image.open(folder / r["image"]).convert("RGB"), len(prompts), len(seeds))
        images = {p: tiles[k * len(seeds):(k + 1) * len(seeds)] for k, p in enumerate(prompts)}
        records.append({"step": r["step"], "images": images, "scores": r.get("scores", {}),
                        "seconds": r.get("seconds")})
    return ValidationRun(Path(output_dir), prompts, seeds, s.get("instance_prompt"), s.get("class_prompt"),
                         data.get("scorer"), records)
