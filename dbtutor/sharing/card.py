"""The model card of a run: README.md in the Hugging Face format (YAML header), what was trained and how to load it.

Written into every saved run (checkpoint.save_pipeline, atomic with the pipeline) from the run's own
dreambooth.yaml and history.json, with a small sample grid (samples.png), the evaluation's numbers once
`dbtutor eval` has measured this very run (eval.json carries the run's stamp), how to load the run in diffusers
and in the web UIs, and the base model's license. huggingface_hub's ModelCard and ModelCardData write the header,
as diffusers' training scripts do. A card names no folder of this machine: its code runs in the run's folder
(paths relative to it, like the card's own links) or, on the Hub, loads the repo id; the base model goes by its
hub id, else its path in the project (data/models/toyworld). Nothing here needs the merged pipeline of a LoRA run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from ..core.config import ROOT

CARD, SAMPLES, EVAL = "README.md", "samples.png", "eval.json"
TOY = ROOT / "data" / "models" / "toyworld"
# hub ids whose card says so; anything else: the local card's `license:`, else "see the base model's card"
LICENSES = {**{f"{org}/stable-diffusion-v1-{v}": "creativeml-openrail-m"
               for org, v in (("CompVis", 1), ("CompVis", 2), ("CompVis", 3), ("CompVis", 4), ("runwayml", 5),
                              ("stable-diffusion-v1-5", 5))},
            **{f"stabilityai/stable-diffusion-2{v}": "openrail++" for v in ("", "-base", "-1", "-1-base")}}
LICENSE_TEXT = {"mit": "MIT (the dbtutor project's license)",
                "creativeml-openrail-m": "CreativeML OpenRAIL-M: https://huggingface.co/spaces/CompVis/stable-diffusion-license",
                "openrail++": "CreativeML OpenRAIL++-M: https://huggingface.co/stabilityai/stable-diffusion-2/blob/main/LICENSE-MODEL"}
SCHEDULER_CLASSES = {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}


def run_stamp(run) -> str | None:
    """What identifies one saved training result: sha256 of its history.json and dreambooth.yaml (None if absent)."""
    run = Path(run)
    if not (run / "history.json").exists():
        return None
    config = run / "dreambooth.yaml"
    return hashlib.sha256((run / "history.json").read_bytes() + (config.read_bytes() if config.exists() else b"")
                          ).hexdigest()[:16]


def hub_id(pretrained: str) -> str | None:
    """The Hub id of the base model: itself, or read off a Hugging Face cache folder (models--org--name/snapshots)."""
    text = str(pretrained)
    if m := re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots", text):
        return f"{m[1]}/{m[2]}"
    if not Path(text).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return text
    return None


def base_license(pretrained: str) -> tuple[str, str]:
    """(the card's `license:` id, a line for people): the embedded model is MIT; a local folder's card says, else a
    known hub id, else 'other'."""
    folder = Path(str(pretrained)).expanduser()
    if folder.is_dir() and folder.resolve() == TOY.resolve():
        return "mit", LICENSE_TEXT["mit"]
    lic = (card_metadata(folder / CARD).get("license") if folder.is_dir() else None) or LICENSES.get(hub_id(pretrained) or "")
    if not lic:
        return "other", "see the base model's card"
    return str(lic), LICENSE_TEXT.get(str(lic), f"{lic} (see the base model's card)")


def card_metadata(path: Path) -> dict:
    """A model card's YAML header as huggingface_hub reads it ({} without a readable one)."""
    from huggingface_hub import ModelCard
    try:
        if not Path(path).read_text(encoding="utf-8").startswith("---"):
            return {}                                 # no header (huggingface_hub would log that it found none)
        return ModelCard.load(path, ignore_metadata_errors=True).data.to_dict()
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def base_names(pretrained: str, at: str | None) -> tuple[str, str, str]:
    """How the card names the base model: (in its text, in its code, a comment for that line of code). By hub id
    where one is known; else in the text its path in the project (or its folder's name), and in the code its path
    relative to the run folder `at` (the card's own folder), or on the Hub (`at` None) its path in the project."""
    if base_id := hub_id(pretrained):
        return base_id, base_id, ""
    folder = Path(str(pretrained)).expanduser().resolve()
    in_project = folder.is_relative_to(ROOT.resolve())
    shown = folder.relative_to(ROOT.resolve()).as_posix() if in_project else folder.name
    what = f"dbtutor's {shown}" if in_project else f"a local folder named {shown}"
    if at is not None and (rel := _relative(folder, Path(at).expanduser().resolve())):
        return shown, rel, f"   # the base model: {what}"
    if at is None and in_project:
        return shown, shown, f"   # the base model: {what}; run this in the dbtutor folder"
    return shown, shown, f"   # the base model ({what}): give its path here"


def _relative(target: Path, start: Path) -> str | None:
    """target relative to start; None if they share no folder but the root (the path would spell target out)."""
    try:
        common = Path(os.path.commonpath([target, start]))
    except ValueError:                                # another drive
        return None
    return None if common == Path(common.anchor) else Path(os.path.relpath(target, start)).as_posix()


def grid_prompts(cfg) -> list[str]:
    d = cfg.model.data
    return [d.instance_prompt] + ([d.regularization_prompt] if d.regularization_prompt else [])


@torch.no_grad()
def sample_grid(pipe, cfg, path) -> Path | None:
    """The card's picture: the instance and the class prompt x model.sampling.card_seeds seeds (0, 1, ...), at
    model.sampling's settings, one image at a time (the optimizer state may still fill the GPU); the pipeline's
    scheduler, training mode and the global RNG are left as they were."""
    from ..models.pipeline import sample
    s = cfg.model.sampling
    n = int(s.get("card_seeds", 2))
    if n <= 0:
        return None
    prompts = grid_prompts(cfg)
    scheduler, modes = pipe.scheduler, {m: getattr(pipe, m).training for m in ("unet", "text_encoder", "vae")}
    try:
        with torch.random.fork_rng(devices=[]):
            for m in modes:
                getattr(pipe, m).eval()
            images = sample(pipe, [p for p in prompts for _ in range(n)], [i for _ in prompts for i in range(n)],
                            s.num_inference_steps, s.guidance_scale, s.scheduler, batch_size=1)   # least memory
    finally:
        pipe.scheduler = scheduler
        for m, training in modes.items():
            getattr(pipe, m).train(training)
    return tile(images, len(prompts), path)


def tile(images, rows: int, path, gap: int = 4) -> Path:
    """The images in `rows` rows on white, saved atomically (PIL: a few ms; the card's text names rows and columns)."""
    from PIL import Image

    from ..core.fileio import save_image
    cols, (w, h) = len(images) // rows, images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    save_image(grid, path)
    return Path(path)


def _evaluation(run) -> dict | None:
    """eval.json's metrics if `dbtutor eval` measured this very run (its stamp), else None."""
    try:
        res = json.loads((Path(run) / EVAL).read_text())
    except (OSError, ValueError):
        return None
    stamp = run_stamp(run)
    return res if stamp and isinstance(res, dict) and res.get("run") == stamp else None


def _load_code(cfg, run: str, kind: str, base: str, note: str, local: bool) -> str:
    """The diffusers lines that load this run, as the card shows them (tests run them offline)."""
    from ..models.lora import WEIGHT_NAME
    s, d = cfg.model.sampling, cfg.model.data
    lines = ["# run this in the run's folder, the one holding this card: its paths are relative to it"] if local else []
    lines += ["import torch", "from diffusers import StableDiffusionPipeline"]
    if s.scheduler in SCHEDULER_CLASSES:
        lines[-1] += f", {SCHEDULER_CLASSES[s.scheduler]}"
    if kind == "lora":     # the base from the files the run trained on (model.variant), in float32 as training read them
        variant = f", variant={cfg.model.variant!r}, torch_dtype=torch.float32" if cfg.model.get("variant") else ""
        lines += [f"pipe = StableDiffusionPipeline.from_pretrained({base!r}{variant}){note or '   # the base model'}",
                  f"pipe.load_lora_weights({run!r}, weight_name={WEIGHT_NAME!r})"]
    else:
        lines += [f"pipe = StableDiffusionPipeline.from_pretrained({run!r})"]
    if s.scheduler in SCHEDULER_CLASSES:
        extra = ", clip_sample=False" if s.scheduler == "ddim" else ""
        lines += [f"pipe.scheduler = {SCHEDULER_CLASSES[s.scheduler]}.from_config(pipe.scheduler.config{extra})"]
    lines += [f"image = pipe({d.instance_prompt!r}, num_inference_steps={s.num_inference_steps}, "
              f"guidance_scale={s.guidance_scale}, generator=torch.Generator().manual_seed(0)).images[0]",
              "image.save('sample.png')"]
    return "\n".join(lines)


def card_text(folder, cfg, history: list, evaluation: dict | None = None, name: str | None = None,
              samples: bool = False, hub: bool = False) -> str:
    """The model card of the run whose files are in `folder`, which will be loaded from `name` (default: the
    folder; the final output_dir while the files are still in .pipeline.new). `hub`: the card goes to the Hub and
    `name` is the repo id its code loads; otherwise its code runs in the run's folder (see base_names)."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..core.errors import ConfigError
    from .export import NotStableDiffusion, check_architecture, kohya_state
    from ..models.lora import WEIGHT_NAME
    from ..measuring.prompts import split_prompts
    m, d, o, t = cfg.model, cfg.model.data, cfg.optim, cfg.trainer
    folder = Path(folder)
    lora, merged = bool(m.lora.rank), (folder / "model_index.json").exists()
    where, base = (name if hub and name else "."), str(m.pretrained)
    base_id, (shown, code_base, note) = hub_id(base), base_names(base, None if hub else (name or str(folder)))
    local = where.split("/")[-1] if hub else "."      # where `dbtutor export` finds the run's files: a download's
    get = [f"huggingface-cli download {where} --local-dir {local}"] if hub else []
    lic, lic_text = base_license(base)
    try:
        ident, noun = split_prompts(d.instance_prompt, d.regularization_prompt or d.instance_prompt)
    except ConfigError:
        ident, noun = "?", "?"
    tags = ["text-to-image", "diffusers", "stable-diffusion", "stable-diffusion-diffusers", "dreambooth", "dbtutor"]
    meta = ModelCardData(base_model=base_id, library_name="diffusers", license=lic, tags=tags + (["lora"] if lora else []),
                         instance_prompt=str(d.instance_prompt), inference=True)
    problem = False
    try:
        if lora:
            from safetensors.torch import load_file
            kohya_state(folder, load_file(str(folder / WEIGHT_NAME)))
        else:
            check_architecture(folder, *(json.loads((folder / p / "config.json").read_text())
                                      for p in ("unet", "vae", "text_encoder")))
    except NotStableDiffusion:
        problem = True
    except (OSError, ValueError):                    # unreadable: the export command will say why
        pass
    what = f"LoRA, rank {m.lora.rank}, alpha {m.lora.alpha or m.lora.rank}" if lora else "full fine-tuning"
    trained = "UNet and text encoder" if m.train_text_encoder else "UNet (text encoder frozen)"
    prior = (f"yes, λ = {m.prior_loss_weight}, {d.num_reg_images} class images of '{d.regularization_prompt}'"
             if m.with_prior_preservation else "no")
    last = [h for h in history[-10:] if "instance_loss" in h and "prior_loss" in h]
    loss = (f"instance {sum(h['instance_loss'] for h in last) / len(last):.4f}, prior "
            f"{sum(h['prior_loss'] for h in last) / len(last):.4f} (mean of the last {len(last)} steps)") if last else "-"
    out = [f"# DreamBooth: {d.instance_prompt}", "",
           f"A DreamBooth model ({what}) of `{shown}`, trained with dbtutor on photos of one subject: prompts with "
           f"the identifier **{ident}** before the class word ({noun}) draw it, e.g. \"{d.instance_prompt}\".", ""]
    if samples:
        n = int(m.sampling.get("card_seeds", 2))
        out += [f"![samples]({SAMPLES})", "",
                f"Rows: {', '.join(repr(p) for p in grid_prompts(cfg))}; columns: seeds 0 to {n - 1} "
                f"({m.sampling.scheduler}, {m.sampling.num_inference_steps} steps, guidance {m.sampling.guidance_scale}).", ""]
    out += ["## Training", "", "| setting | value |", "| --- | --- |",
            f"| base model | `{shown}` |", f"| instance prompt | {d.instance_prompt} |",
            f"| class prompt | {d.regularization_prompt or '-'} |", f"| identifier | {ident} (class: {noun}) |",
            f"| prior preservation | {prior} |", f"| method | {what}; trains the {trained} |",
            f"| steps | {len(history)} (trainer.max_steps {t.max_steps}), batch {t.batch_size} |",
            f"| learning rate | {o.lr} ({o.lr_scheduler}, {o.warmup_steps} warmup steps) |",
            f"| precision | {t.precision} |", f"| LoRA rank | {m.lora.rank or '- (full fine-tuning)'} |",
            f"| resolution | {d.resolution} px |", f"| final losses | {loss} |", "",
            "The whole config is in `dreambooth.yaml`, the loss of every step in `history.json`.", ""]
    if evaluation:
        from ..measuring.evaluate import METRICS
        ev, es = evaluation["metrics"], evaluation.get("settings", {})
        out += ["## Evaluation", "",
                f"`dbtutor eval` ({es.get('backend', '?')} back end, {es.get('num_samples', '?')} samples per prompt, "
                f"{es.get('class_samples', '?')} of the class prompt; the DreamBooth paper's measures):", "",
                "| metric | value | better | what |", "| --- | --- | --- | --- |"]
        out += [f"| {k} | {ev[k]:.3f} | {METRICS[k][1] or '-'} | {METRICS[k][0]} |" for k in METRICS if k in ev]
        out += ["", "All numbers and the samples they were measured on: `eval.json`, `eval.png`.", ""]
    out += ["## Use it with diffusers", "", "```python",
            _load_code(cfg, where, "lora" if lora else "full", code_base, note, not hub), "```", ""]
    if lora:
        out += [f"`{WEIGHT_NAME}` holds the adapters alone (stock diffusers format); `weight_name` makes "
                "`load_lora_weights` work offline too (HF_HUB_OFFLINE=1)."]
        if merged:
            out += [f"The run also holds the base model with the adapters merged in: "
                    f"`StableDiffusionPipeline.from_pretrained({where!r})` loads the trained model directly (do not "
                    "also load the adapters into it)."]
        out += [""]
    out += ["## Use it in AUTOMATIC1111's web UI or ComfyUI", ""]
    if problem:
        out += [f"Not possible: `{shown}` is not Stable Diffusion 1.x/2.x's architecture, and the web UIs load only "
                "those. Use the diffusers folder as above.", ""]
    elif lora:
        out += ["The web UIs read LoRA files in kohya's layout. Write one with", "", "```bash", *get,
                f"dbtutor export {local} --out {ident}_{noun}.safetensors", "```", "",
                f"and copy it into `stable-diffusion-webui/models/Lora/` (ComfyUI: `models/loras/`). Load the base "
                f"model `{shown}` as the checkpoint and add the LoRA: in AUTOMATIC1111's prompt "
                f"`{d.instance_prompt} <lora:{ident}_{noun}:1>`, in ComfyUI a LoraLoader node.", ""]
    else:
        out += ["The web UIs read one checkpoint file in Stable Diffusion's original layout. Write one with", "",
                "```bash", *get, f"dbtutor export {local} --out {ident}_{noun}.safetensors   # --half: fp16, half the size",
                "```", "",
                "and copy it into `stable-diffusion-webui/models/Stable-diffusion/` (ComfyUI: `models/checkpoints/`), "
                f"pick it and prompt \"{d.instance_prompt}\". diffusers reads that file too: "
                f"`StableDiffusionPipeline.from_single_file('{ident}_{noun}.safetensors', config={where!r})`.", ""]
    out += ["## License", "", f"The base model's license applies to this model: {lic_text}.", ""]
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(out)))


def write_card(folder, cfg, history: list, name: str | None = None) -> Path:
    """Write folder/README.md (atomically) for the run whose files are in `folder` (named `name` in its code)."""
    from ..core.fileio import write_text
    folder = Path(folder)
    text = card_text(folder, cfg, history, _evaluation(folder), name, samples=(folder / SAMPLES).exists())
    write_text(folder / CARD, text)
    return folder / CARD


def refresh_card(run) -> Path | None:
    """Rewrite run/README.md from the run's own files (after `dbtutor eval`); None if `run` is no dbtutor run."""
    run = Path(run)
    if not (run / "dreambooth.yaml").exists() or not (run / "history.json").exists():
        return None
    cfg = OmegaConf.load(run / "dreambooth.yaml")
    return write_card(run, cfg, json.loads((run / "history.json").read_text()))
