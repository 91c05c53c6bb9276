"""Logging a run to TensorBoard or Weights & Biases (trainer.log_with), through accelerate's trackers.

Every step: loss, instance loss, prior loss and learning rate; every validation: its picture (prompts x seeds) and
its scores. The logs go to output_dir/logs (TensorBoard: output_dir/logs/dbtutor; `tensorboard --logdir
output_dir/logs`). A resumed run appends to the same log: TensorBoard hides what the interrupted run logged after
the step it resumes from, W&B continues the same run (its id is kept in output_dir/logs/wandb-run-id).
"""
from __future__ import annotations

import importlib
import uuid
from pathlib import Path

from ..core.errors import ConfigError

LOGS = "logs"
PROJECT = "dbtutor"                # TensorBoard: the run folder under output_dir/logs; W&B: the project
WANDB_ID = "wandb-run-id"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}     # trainer.log_with -> the package (and extra) it needs


def require(name: str) -> None:
    """A tracker's library, or one line saying what to install."""
    try:
        importlib.import_module(PACKAGES[name])
    except ImportError:
        raise ConfigError(f"trainer.log_with={name} needs the {PACKAGES[name]} package: pip install "
                          f"'dbtutor[{name}]' (or pip install {PACKAGES[name]}), or set trainer.log_with=null") from None


def accelerator_kwargs(cfg) -> dict:
    """What Accelerator(...) needs to log with trainer.log_with (nothing when it is null)."""
    name = cfg.trainer.log_with
    if not name:
        return {}
    require(name)
    return {"log_with": name, "project_dir": str(Path(cfg.output_dir) / LOGS)}


def _hparams(cfg) -> dict:
    """The config as trackers take hyperparameters: dotted keys, scalar values (a list as its text)."""
    from omegaconf import OmegaConf

    from .same_run import flatten
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
            for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}


def wandb_run_id(out: Path, start: int) -> str:
    """The W&B run of this output_dir: a new one when training starts at step 0, else the one it started."""
    path = Path(out) / LOGS / WANDB_ID
    if start > 0 and path.exists() and path.read_text().strip():
        return path.read_text().strip()
    from ..core.fileio import write_text
    run_id = uuid.uuid4().hex[:12]
    write_text(path, run_id)
    return run_id


class Trackers:
    """accelerator.init_trackers / log / the tracker-specific image calls / finish, for one training run.

    Only the main process has trackers (accelerate's rule); on the others every call does nothing."""

    def __init__(self, cfg, accelerator, start: int = 0, active: bool = True):
        self.accelerator, self.name = accelerator, cfg.trainer.log_with
        if not (self.name and active and accelerator.is_main_process):
            self.name = None
            return
        out = Path(cfg.output_dir)
        # events that an interrupted run logged after `start` are hidden (it goes on from there); at step 0 all
        init = {"tensorboard": {"purge_step": start + 1 if start else 0}}
        if self.name == "wandb":
            init["wandb"] = {"dir": str(out / LOGS), "name": out.name, "id": wandb_run_id(out, start),
                             "resume": "allow", "config": _hparams(cfg)}
        (out / LOGS).mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers(PROJECT, init_kwargs=init)

    def scalars(self, values: dict, step: int) -> None:
        if self.name:
            self.accelerator.log(values, step=step)

    def picture(self, tag: str, image, step: int, caption: str = "") -> None:
        """One image (PIL) with the tracker's own call: TensorBoard's add_image, W&B's wandb.Image."""
        if not self.name:
            return
        tracker = self.accelerator.get_tracker(self.name, unwrap=True)
        if self.name == "tensorboard":
            import numpy as np
            tracker.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
            tracker.flush()
        else:
            import wandb
            tracker.log({tag: wandb.Image(image, caption=caption)}, step=step)

    def close(self) -> None:
        """Finish the trackers (their files complete); accelerate's end_training would also end the process group."""
        if self.name:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
            self.name = None
