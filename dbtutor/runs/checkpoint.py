"""Checkpoints and the final output: atomic folders of safetensors, resumable, refused when the config changed."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ..core.errors import ConfigError, DataError, DBTutorError, TrainingError
from ..core.fileio import fsync_dir, fsync_tree, load_torch, save_torch, write_json, write_text
from ..core.hooks import fault_point
from ..models.pipeline import sd_layout
from .same_run import changed_keys, training_config

CKPT = "checkpoints"
KEEP = 2


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / CKPT / f"step_{step:06d}"


def _weights(module) -> dict:
    """What a checkpoint keeps of a module: all of it, or with LoRA only the (small) adapter tensors."""
    from ..models.lora import adapter_state, has_lora
    state = adapter_state(module) if has_lora(module) else module.state_dict()
    return {k: v.detach().contiguous() for k, v in state.items()}


def save(out, cfg, modules: dict, optimizer, lr_sched, step: int, history: list[dict], world_size: int = 1,
         scaler=None):
    """Write checkpoints/step_N as a temp folder renamed into place; keep the newest KEEP. With fp16 loss scaling,
    the GradScaler's state (scale and growth tracker) is saved beside the optimizer's, so a resumed run goes on
    with the same scale.

    Only one process writes checkpoints. Killed at any moment, the folder holds the checkpoints it held before,
    plus at most a hidden half-written .tmp-step_N that the next save removes and resume never reads.
    Weights that are not finite are refused (TrainingError): the last good checkpoint stays the newest."""
    final = step_dir(out, step)
    tmp = final.with_name(f".tmp-{final.name}")
    for left in final.parent.glob(".tmp-step_*") if final.parent.is_dir() else []:
        shutil.rmtree(left, ignore_errors=True)      # a save that was killed
    for left in final.parent.glob(".del-step_*") if final.parent.is_dir() else []:
        shutil.rmtree(left, ignore_errors=True)      # a removal that was killed
    weights = {name: _weights(m) for name, m in modules.items()}
    for name, w in weights.items():
        bad = [k for k, v in w.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise TrainingError(f"the {name} weights are not finite after step {step} ({bad[0]}): lower optim.lr "
                                f"or use trainer.precision=32; the last good checkpoint in {final.parent} is kept")
    tmp.mkdir(parents=True)
    for name, w in weights.items():
        save_file(w, str(tmp / f"{name}.safetensors"))
        fault_point("ckpt")
    state = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()      # numbers only: loads with weights_only=True
    save_torch(state, tmp / "optimizer.pt")
    write_json(tmp / "state.json", {"step": step, "history": history, "config": training_config(cfg),
                                    "world_size": world_size})
    fsync_tree(tmp)
    if final.exists():                               # the same step again (a finished run rerun): swap
        _remove(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    for old in complete(out)[:-KEEP]:
        _remove(old)


def _remove(folder: Path):
    """Delete a folder by renaming it to a hidden name first: a kill half-way never leaves a half-deleted
    folder under its old name (which could look complete)."""
    gone = folder.with_name(f".del-{folder.name}")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def complete(out) -> list[Path]:
    """Finished checkpoint folders, oldest first (a folder without state.json was interrupted)."""
    root = Path(out) / CKPT
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if (p / "state.json").exists()), key=lambda p: p.name)


def latest(out, cfg, world_size: int = 1) -> Path | None:
    """The newest checkpoint, after checking it was made with the same training config and global batch."""
    dirs = complete(out)
    if not dirs:
        return None
    try:
        state = json.loads((dirs[-1] / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"checkpoint {dirs[-1]} cannot be read ({type(e).__name__}): delete that folder to resume "
                        "from an older one, or set trainer.resume=false to start over") from None
    was = state.get("world_size", 1)
    if was != world_size:
        raise ConfigError(f"{dirs[-1]} was trained by {was} process(es), this run has {world_size}: the global batch "
                          f"(trainer.batch_size x processes) would change; launch {was} process(es), use another "
                          "output_dir, or trainer.resume=false to start over")
    saved = state["config"]
    now = training_config(cfg)
    diff = changed_keys(saved, now)
    if diff:
        raise ConfigError(f"{dirs[-1]} was trained with another config ({diff[0]}: {saved.get(diff[0])!r} there, "
                          f"{now.get(diff[0])!r} now): use another output_dir, or trainer.resume=false to start over")
    return dirs[-1]


def restore(path: Path, modules: dict, optimizer, lr_sched, scaler=None) -> tuple[int, list[dict]]:
    """Load a checkpoint into the modules, optimizer, lr schedule and (fp16) GradScaler; a damaged file is one clear
    error. A checkpoint without a scaler state (made in fp32 or bf16) leaves a given scaler at its initial scale."""
    try:
        return _restore(path, modules, optimizer, lr_sched, scaler)
    except DBTutorError:
        raise
    except Exception as e:                           # a damaged file, or a pickle that weights_only refuses
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise DataError(f"checkpoint {path} cannot be loaded ({type(e).__name__}: {msg}): delete that folder to "
                        f"resume from an older one, or set trainer.resume=false to start over") from None


def _restore(path: Path, modules: dict, optimizer, lr_sched, scaler) -> tuple[int, list[dict]]:
    from ..models.lora import has_lora, load_adapter_state
    for name, m in modules.items():
        weights = load_file(str(path / f"{name}.safetensors"))
        if has_lora(m):
            load_adapter_state(m, weights, str(path / f"{name}.safetensors"))
        else:
            m.load_state_dict(weights)
    opt = load_torch(path / "optimizer.pt")
    optimizer.load_state_dict(opt["optimizer"])
    lr_sched.load_state_dict(opt["lr_scheduler"])
    if scaler is not None and "scaler" in opt:
        scaler.load_state_dict(opt["scaler"])
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["history"]


def clear(out):
    shutil.rmtree(Path(out) / CKPT, ignore_errors=True)


def finish(out, keep: bool):
    """After the final pipeline is saved: remove output_dir/checkpoints (weights + optimizer state, about 3x the
    trained weights each), or with `keep` (trainer.keep_checkpoints) all but the newest, to continue exactly."""
    root = Path(out) / CKPT
    shutil.rmtree(root.with_name(f".del-{CKPT}"), ignore_errors=True)     # a removal that was killed
    if not root.is_dir():
        return
    if not keep:
        _remove(root)
        return
    for old in complete(out)[:-1]:
        _remove(old)


PIPELINE_NEW, PIPELINE_OLD, READY = ".pipeline.new", ".pipeline.old", ".ready"


def save_pipeline(pipe, cfg, out, history):
    """Save a complete diffusers pipeline into `out`, with history.json, dreambooth.yaml, a model card (README.md)
    and its samples (a LoRA run with model.lora.save_merged=false: the adapters alone, with the same four files).

    Crash-safe: the new pipeline is written whole into out/.pipeline.new first (the old output stays loadable
    all that time), then its parts are swapped in by renames, with model_index.json moved away first and moved
    in last. Killed at any moment, `out` holds the previous pipeline, or the new one, or - during the
    milliseconds of the swap - no model_index.json (so it does not load half-new); the next save (a rerun)
    finishes or discards the interrupted one first (recover_output)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recover_output(out)
    new = out / PIPELINE_NEW
    shutil.rmtree(new, ignore_errors=True)
    pipe.unet.to(memory_format=torch.contiguous_format)
    from ..models.lora import fuse_lora, save_lora
    save_lora(pipe, cfg, new)           # LoRA: the adapters alone, for base + load_lora_weights(out) ...
    if not cfg.model.lora.rank or cfg.model.lora.save_merged:
        fuse_lora(pipe)                 # ... and the pipeline with them merged in, for from_pretrained(out)
        pipe.save_pretrained(new, safe_serialization=True)
        sd_layout(new)                  # as SD's folders, which transformers 4 reads too (5 saves another)
    else:
        new.mkdir(parents=True, exist_ok=True)
    write_json(new / "history.json", history)
    write_text(new / "dreambooth.yaml", OmegaConf.to_yaml(cfg))
    from ..sharing.card import SAMPLES, sample_grid, write_card
    try:                                # a few samples for the model card; never worth losing the run over
        sample_grid(pipe, cfg, new / SAMPLES)
    except Exception as e:              # e.g. out of GPU memory
        why = str(e).splitlines()[0][:120] if str(e) else ""
        warnings.warn(f"no sample grid in the model card ({type(e).__name__}: {why}); "
                      "set model.sampling.card_seeds=0 to skip it")
    write_card(new, cfg, history, name=str(out))            # the model card, README.md
    fsync_tree(new)
    write_json(new / READY, sorted(p.name for p in new.iterdir()))   # the list of parts; written last
    fault_point("pipeline")
    _swap(out)


def _pipeline_parts(index: Path) -> set[str]:
    """The entries of `out` that belong to the pipeline described by a model_index.json (if it is readable)."""
    from ..sharing.card import CARD, SAMPLES
    from ..models.lora import WEIGHT_NAME
    parts = {WEIGHT_NAME, CARD, SAMPLES}    # an earlier run's adapters, card and samples would not match a new one
    try:
        parts |= {k for k, v in json.loads(index.read_text()).items()
                  if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None}
    except (OSError, ValueError, AttributeError):
        pass
    return parts


def _swap(out: Path):
    """Move the parts of out/.pipeline.new into `out`; can be rerun after a kill at any point (idempotent)."""
    new, old = out / PIPELINE_NEW, out / PIPELINE_OLD
    parts = json.loads((new / READY).read_text())
    old.mkdir(exist_ok=True)
    index = out / "model_index.json"
    if (new / "model_index.json").exists() and index.exists():
        os.replace(index, old / "model_index.json")  # from here until the commit, `out` is not a pipeline
    for name in sorted((set(parts) | _pipeline_parts(old / "model_index.json")) - {"model_index.json"}):
        src, dest = new / name, out / name
        if name in parts and not src.exists():
            continue                                 # swapped in before an interruption
        if dest.exists() or dest.is_symlink():
            aside = old / name
            if aside.is_dir():
                shutil.rmtree(aside)
            os.replace(dest, aside)
        if src.exists():
            os.replace(src, dest)
        fault_point("pipeline")
    if (new / "model_index.json").exists():
        os.replace(new / "model_index.json", index)  # the commit
    fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)


def recover_output(out) -> None:
    """Finish a pipeline swap that was interrupted, or discard a pipeline that was not completely written."""
    out = Path(out)
    new = out / PIPELINE_NEW
    if (new / READY).exists():
        _swap(out)
    else:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(out / PIPELINE_OLD, ignore_errors=True)
    shutil.rmtree(out / ".pipeline.tmp", ignore_errors=True)        # the layout of older versions
