"""Checkpoints and the final output: atomic folders of safetensors, resumable, refused when the config changed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .fileio import load_torch, save_torch, write_json, write_text

CKPT = "checkpoints"
KEEP = 2
# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.progress", "trainer.checkpoint_every", "trainer.resume",
                     "trainer.device", "model.data.num_workers", "output_dir", "model.pretrained",
                     "model.data.instance_dir", "model.data.regularization_dir", "model.data.cached_instance_dir",
                     "model.data.cached_reg_dir", "model.compile", "model.channels_last", "model.gradient_checkpointing",
                     "model.attention", "model.sampling"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key in RESUMABLE_CHANGES:
            continue
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def fingerprint(cfg) -> dict:
    """The config keys that define the training trajectory."""
    return _flat(OmegaConf.to_container(cfg, resolve=True))


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / CKPT / f"step_{step:06d}"


def save(out, cfg, modules: dict, optimizer, lr_sched, step: int, history: list[dict]):
    """Write checkpoints/step_N as a temp folder renamed into place; keep the newest KEEP."""
    final = step_dir(out, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in modules.items():
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    save_torch({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()}, tmp / "optimizer.pt")
    write_json(tmp / "state.json", {"step": step, "history": history, "config": fingerprint(cfg)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def complete(out) -> list[Path]:
    """Finished checkpoint folders, oldest first (a folder without state.json was interrupted)."""
    root = Path(out) / CKPT
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if (p / "state.json").exists()), key=lambda p: p.name)


def latest(out, cfg) -> Path | None:
    """The newest checkpoint, after checking it was made with the same training config."""
    dirs = complete(out)
    if not dirs:
        return None
    saved = json.loads((dirs[-1] / "state.json").read_text())["config"]
    now = fingerprint(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ConfigError(f"{dirs[-1]} was trained with another config ({diff[0]}: {saved.get(diff[0])!r} there, "
                          f"{now.get(diff[0])!r} now): use another output_dir, or trainer.resume=false to start over")
    return dirs[-1]


def restore(path: Path, modules: dict, optimizer, lr_sched) -> tuple[int, list[dict]]:
    for name, m in modules.items():
        m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    opt = load_torch(path / "optimizer.pt")
    optimizer.load_state_dict(opt["optimizer"])
    lr_sched.load_state_dict(opt["lr_scheduler"])
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["history"]


def clear(out):
    shutil.rmtree(Path(out) / CKPT, ignore_errors=True)


def save_pipeline(pipe, cfg, out, history):
    """Save a complete diffusers pipeline into `out` (each part swapped in by rename), plus history and config."""
    out = Path(out)
    tmp = out / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.unet.to(memory_format=torch.contiguous_format)
    from .lora import save_lora
    save_lora(pipe, cfg, tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for item in sorted(tmp.iterdir()):
        dest = out / item.name
        if dest.is_dir():
            old = out / f".old-{item.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(item, dest)
            shutil.rmtree(old)
        else:
            os.replace(item, dest)
    tmp.rmdir()
    write_json(out / "history.json", history)
    write_text(out / "dreambooth.yaml", OmegaConf.to_yaml(cfg))
