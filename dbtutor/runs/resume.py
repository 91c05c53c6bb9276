"""Where a run starts: its newest checkpoint (exactly), its saved pipeline (the weights; fresh optimizer), or step 0."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..core.errors import ConfigError, DataError
from . import checkpoint as ckpt
from .same_run import changed_keys, training_config

RUN_FILES = ("history.json", "dreambooth.yaml")   # with model_index.json (a pipeline) or LoRA adapters: a saved run


@dataclass
class Start:
    lr_sched: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    history: list[dict] = field(default_factory=list)
    source: str = "start"          # "start", "checkpoint" or "pipeline"
    finished: bool = False         # output_dir already holds this run's pipeline at trainer.max_steps


def saved_run(out, cfg) -> tuple[int, list[dict]] | None:
    """(steps, loss history) of the pipeline in `out` if dbtutor.train saved it with this training config;
    None if `out` holds none; ConfigError if it was trained with another config."""
    from ..models.lora import WEIGHT_NAME
    out = Path(out)
    weights = (out / "model_index.json").exists() or (cfg.model.lora.rank and (out / WEIGHT_NAME).exists())
    if not weights or not all((out / name).exists() for name in RUN_FILES):
        return None
    try:
        history = json.loads((out / "history.json").read_text())
        saved = OmegaConf.load(out / "dreambooth.yaml")
    except Exception as e:
        raise DataError(f"{out}: history.json or dreambooth.yaml cannot be read ({type(e).__name__}): use another "
                        "output_dir, or trainer.resume=false to start over") from None
    was, now = training_config(saved), training_config(cfg)
    diff = changed_keys(was, now)
    if diff:
        raise ConfigError(f"{out} holds a pipeline trained with another config ({diff[0]}: {was.get(diff[0])!r} there, "
                          f"{now.get(diff[0])!r} now): use another output_dir, or trainer.resume=false to start over")
    return (history[-1]["step"] if history else 0), history


def load_saved_weights(out, cfg, modules: dict) -> None:
    """Load the trained weights of a saved pipeline into the modules being trained (after add_lora): the UNet and
    text encoder as saved, or with LoRA the adapters of pytorch_lora_weights.safetensors."""
    from ..models.lora import WEIGHT_NAME, load_saved_adapters
    out = Path(out)
    if cfg.model.lora.rank:
        from ..models.weight_files import BadFile, safetensors_header
        try:
            safetensors_header(out / WEIGHT_NAME)
        except BadFile as e:
            raise DataError(f"{out}: {WEIGHT_NAME} {e.problem}, so the LoRA run cannot continue: use another "
                            "output_dir, or trainer.resume=false to start over") from None
        for name, module in modules.items():
            load_saved_adapters(module, out, name)
        return
    from diffusers import StableDiffusionPipeline
    from ..models.model_check import check_model
    from ..models.pipeline import load_checked
    folder = check_model(out, "output_dir", parts=tuple(modules))     # one line for a damaged saved pipeline
    index = StableDiffusionPipeline.load_config(str(folder))
    for name, module in modules.items():
        module.load_state_dict(load_checked(folder, name, *index[name], checked=True).state_dict())


def _step_of(path: Path | None) -> int:
    return int(path.name.split("_")[-1]) if path is not None else -1


def start_point(cfg, accelerator, modules: dict, optimizer, lr_lambda) -> Start:
    """Decide where training starts and load that state; the newer of the checkpoint and the saved pipeline wins.

    From a checkpoint the run continues exactly (weights, optimizer, lr schedule). From the saved pipeline of a
    finished run (its checkpoints removed after the final save, trainer.keep_checkpoints=false) the weights are
    loaded, the loss history continues and the lr schedule goes on at that step, but AdamW's moments start from
    zero: one line says so. Otherwise the checkpoints of an earlier run are removed and training starts at 0.
    Returns the step, the history so far and the lr schedule (torch's LambdaLR over `lr_lambda`) at that step."""
    out, tr = Path(cfg.output_dir), cfg.trainer
    LambdaLR = torch.optim.lr_scheduler.LambdaLR
    if not tr.resume:
        if accelerator.is_main_process:
            ckpt.clear(out)
        return Start(LambdaLR(optimizer, lr_lambda))
    if accelerator.is_main_process:
        ckpt.recover_output(out)                 # a final save cut off half-way is finished (or dropped) first
    accelerator.wait_for_everyone()
    state = ckpt.latest(out, cfg, accelerator.num_processes)
    saved = saved_run(out, cfg)
    newest = max(_step_of(state), saved[0] if saved else -1)
    if newest > tr.max_steps:
        raise ConfigError(f"{out} already holds {newest} steps, more than trainer.max_steps={tr.max_steps}: raise "
                          "trainer.max_steps, use another output_dir, or trainer.resume=false to start over")
    if saved and saved[0] > _step_of(state):
        step, history = saved
        load_saved_weights(out, cfg, modules)
        for group in optimizer.param_groups:    # the lr schedule goes on at `step` (torch's documented way)
            group.setdefault("initial_lr", group["lr"])
        lr_sched = LambdaLR(optimizer, lr_lambda, last_epoch=step - 1)
        if accelerator.is_main_process:
            if step == tr.max_steps:
                print(f"{out} already holds this run's pipeline ({step} steps): nothing to train")
            else:
                print(f"continuing {out} from its saved pipeline (step {step}) with a fresh optimizer state: no "
                      "checkpoint was kept (trainer.keep_checkpoints=true keeps one to continue exactly)")
        return Start(lr_sched, step, history, "pipeline", finished=step == tr.max_steps)
    lr_sched = LambdaLR(optimizer, lr_lambda)
    if state is not None:
        step, history = ckpt.restore(state, modules, optimizer, lr_sched, accelerator.scaler)
        if accelerator.is_main_process:
            print(f"resuming from {state} (step {step})")
        done = saved is not None and saved[0] == step == tr.max_steps
        return Start(lr_sched, step, history, "checkpoint", finished=done)
    if accelerator.is_main_process:
        ckpt.clear(out)
    return Start(lr_sched)
