"""The course's training runs: each in a folder named after everything that defines it, so a notebook finds the
run an earlier notebook made."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf


def model_tag(pretrained) -> str:
    """A short name for a base model that changes when its weights change (a hub id is used as it is)."""
    from ..models.model_source import model_fingerprint
    p = Path(str(pretrained)).expanduser()
    if not p.is_dir():
        return str(pretrained).replace("/", "--")
    return f"{p.name}-{model_fingerprint(str(p))[:8]}"


def run_dir(work, cfg) -> Path:
    """The output folder of a training run, named after everything that defines it (config and base model
    weights): rerunning with the same settings finds the finished run (nothing left to do), other settings get a
    fresh folder."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("output_dir", None)
    for k in ("progress", "resume", "keep_checkpoints", "wait_for_lock", "validation", "log_with"):
        c["trainer"].pop(k, None)                                  # they do not change what is trained
    c["model"]["sampling"].pop("card_seeds", None)
    c["model"]["pretrained"] = model_tag(cfg.model.pretrained)
    key = hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:10]
    m = cfg.model
    label = f"prior{m.prior_loss_weight:g}" if m.with_prior_preservation else "noprior"
    return Path(work) / "runs" / f"{label}-{cfg.trainer.max_steps}steps-{key}"


def run_config(overrides: dict, work):
    """load_config(overrides) with output_dir set to run_dir(work, ...)."""
    from ..core.config import load_config
    cfg = load_config(overrides={**overrides, "output_dir": str(Path(work) / "runs" / "_")})
    cfg.output_dir = str(run_dir(work, cfg))
    return cfg


def train_run(overrides: dict, work, progress: bool = True, callback=None):
    """dbtutor.train into run_dir(work, ...): trains once, and reuses the finished run when called again."""
    from ..train import train
    return train(run_config(overrides, work), progress=progress, callback=callback)
