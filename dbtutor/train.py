"""Prior-preservation training: the DreamBooth loop, with checkpoints, resume and a loss history."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .core.config import cached_dirs
from .core.errors import TrainingError
from .core.hooks import RunHooks, device_kind
from .core.images import scan_images
from .core.locks import hold
from .latent_cache import LatentSource, latent_shape as vae_latent_shape
from .models.pipeline import check_pretrained, load_pipeline, pick_device
from .models.precision import (check_precision, half_frozen, loss_scale, make_accelerator,
                               make_optimizer, restore_frozen, scaler_record)
from .regularization import generate_regularization, missing_indices
from .runs.resume import start_point
from .runs.run_checkpoints import RunCheckpoints
from .runs.tracking import accelerator_kwargs


def dreambooth_loss(model_pred, target, with_prior_preservation=True, prior_loss_weight=1.0):
    """NeMo's loss, exactly: the batch is [instance..., prior...]; returns (loss, instance_loss, prior_loss)."""
    if not with_prior_preservation:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        return loss, loss, torch.zeros_like(loss)
    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
    target, target_prior = torch.chunk(target, 2, dim=0)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
    return loss + prior_loss * prior_loss_weight, loss, prior_loss


@dataclass
class TrainResult:
    output_dir: Path
    history: list[dict] = field(default_factory=list)   # per step: step, loss, instance_loss, prior_loss, lr
    seconds: float = 0.0                                 # the whole call; its parts in `times`
    pipe: object = None                                  # the trained pipeline, ready to sample
    saved: bool = True                                   # False: output_dir held this finished run already
    start: int = 0                                       # the step this call began at (resumed: > 0)
    times: dict = field(default_factory=dict)            # seconds: class_images, latent_cache, training, saving


def preflight(cfg):
    """Every check that needs no model: runs before any heavy work. Returns the usable instance images."""
    d = cfg.model.data
    check_pretrained(cfg.model.pretrained, variant=cfg.model.variant)
    paths = scan_images(d.instance_dir, "model.data.instance_dir")
    check_precision(cfg, pick_device(cfg.trainer.device))
    return paths


def step_generator(seed: int, step: int) -> torch.Generator:
    """All randomness of a step comes from (seed, step): a resumed run draws exactly what an unbroken one does."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def clip_gradients(accelerator, params, max_norm: float):
    """accelerator.clip_grad_norm_, minus the rescaling pass when it would multiply by 1 (norm below max_norm):
    the same result, half the memory traffic. Only on a CPU (where reading the norm costs no device sync) with one
    process or DDP; otherwise (GPU, FSDP, DeepSpeed, XLA; a CPU counted as CUDA, core/hooks.py) accelerate's own."""
    from accelerate.utils import DistributedType
    if device_kind(accelerator.device) != "cpu" or accelerator.distributed_type not in (DistributedType.NO,
                                                                                DistributedType.MULTI_CPU):
        return accelerator.clip_grad_norm_(params, max_norm)
    accelerator.unscale_gradients()
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if not max_norm / (float(norm) + 1e-6) >= 1.0:    # torch's coefficient; a NaN/inf norm rescales as torch does
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def lr_lambda(cfg):
    o, total = cfg.optim, max(cfg.trainer.max_steps, 1)

    def f(step):
        warm = min(1.0, (step + 1) / max(o.warmup_steps, 1))
        if o.lr_scheduler == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
        return warm
    return f


def _configure(cfg, unet, text_encoder):
    m = cfg.model
    if m.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor
        unet.set_attn_processor(AttnProcessor())
    if m.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if m.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    if m.channels_last:
        unet.to(memory_format=torch.channels_last)


def train(cfg, progress: bool | None = None, callback=None) -> TrainResult:
    """The whole chain: regularization images (if needed), latent cache (if enabled), training, saving.

    `callback(record)` is called after every step with that step's history record. The run holds output_dir's
    lock throughout (another run on it: LockedError at once, or it waits as trainer.wait_for_lock says)."""
    t0 = time.time()
    instance_paths = preflight(cfg)
    accelerator = make_accelerator(cfg, pick_device(cfg.trainer.device), **accelerator_kwargs(cfg))
    with hold(cfg.output_dir, "output_dir", cfg.trainer.wait_for_lock, accelerator):
        return _train(cfg, accelerator, instance_paths, progress, callback, t0)


def _sources(cfg, pipe, instance_paths, accelerator, show, times) -> tuple[list, list[str], list[Path]]:
    """Class images made (if missing) and the latent sources of the instance and class images, with the class
    folder's lock held from counting its images to caching them (the main process holds it for all); the seconds
    each took go into `times`."""
    d, rank, world = cfg.model.data, accelerator.process_index, accelerator.num_processes
    t = time.time()
    inst_dir, reg_dir = cached_dirs(cfg)
    with contextlib.ExitStack() as held:
        reg_written = []
        if cfg.model.with_prior_preservation:   # every rank counts the folder BEFORE any rank writes into it,
            held.enter_context(hold(d.regularization_dir, "model.data.regularization_dir", cfg.trainer.wait_for_lock,
                                    accelerator))
            todo = missing_indices(Path(d.regularization_dir), d.num_reg_images)
            accelerator.wait_for_everyone()     # then makes every world-th of the same list
            reg_written = generate_regularization(cfg, pipe, rank=rank, world_size=world, progress=show, todo=todo,
                                                  lock=False)
            accelerator.wait_for_everyone()
        times["class_images"], t = time.time() - t, time.time()
        sources = [LatentSource(cfg, instance_paths, inst_dir, pipe.vae, accelerator)]
        prompts = [d.instance_prompt]
        if cfg.model.with_prior_preservation:
            reg_paths = scan_images(d.regularization_dir, "model.data.regularization_dir")
            sources.append(LatentSource(cfg, reg_paths, reg_dir, pipe.vae, accelerator))
            prompts.append(d.regularization_prompt)
        times["latent_cache"] = time.time() - t
    return sources, prompts, reg_written


def draw_batch(sources, seed: int, step: int, rank: int, world: int, B: int, latent_shape, num_timesteps: int,
               device):
    """This process's slice of step `step`'s global batch (B images per source from each of `world` processes), all
    drawn from step_generator(seed, step): per source the image indices, the VAE's sampling noise (a latent sample
    per image), the diffusion noise and the timesteps. Returns (z, noise, t, embeds_idx, picked): the latents, noise
    and timesteps of the slice (on `device`), the prompt of each row, and per source the image indices used."""
    g = step_generator(seed, step)
    mine = slice(rank * B, (rank + 1) * B)
    zs, noises, ts, embeds_idx, picked = [], [], [], [], []
    for k, src in enumerate(sources):
        idx = torch.randint(0, 2 ** 31 - 1, (B * world,), generator=g)[mine]
        vae_noise = torch.randn((B * world, *latent_shape), generator=g)[mine]
        noises.append(torch.randn((B * world, *latent_shape), generator=g)[mine])
        ts.append(torch.randint(0, num_timesteps, (B * world,), generator=g)[mine])
        zs.append(src(idx, vae_noise, crop_seed=(seed, step, k)))
        embeds_idx += [k] * B
        picked.append((idx % src.n).tolist())
    return torch.cat(zs).to(device), torch.cat(noises).to(device), torch.cat(ts).to(device), embeds_idx, picked


def global_losses(accelerator, loss, instance_loss, prior_loss, step: int, out: Path) -> torch.Tensor:
    """The three losses averaged over processes: the losses of the global batch, which every process sees (and a
    NaN) alike. A loss that is not finite came from the forward pass, which no loss scale changes: stop. (With fp16
    the loss can be finite and its scaled gradients overflow: the scaler skips that step, see models/precision.py.)"""
    logged = accelerator.reduce(torch.stack([loss, instance_loss, prior_loss]).detach().float(), "mean")
    if not torch.isfinite(logged[0]):
        raise TrainingError(f"loss is {logged[0].item()} at step {step}: lower optim.lr or use "
                            f"trainer.precision=32; the last good checkpoint in {out / 'checkpoints'} is kept")
    return logged


def _train(cfg, accelerator, instance_paths, progress, callback, t0) -> TrainResult:
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    m, d, tr = cfg.model, cfg.model.data, cfg.trainer
    out = Path(cfg.output_dir)
    prior = bool(m.with_prior_preservation)
    show = (tr.progress if progress is None else progress) and accelerator.is_local_main_process

    pipe = load_pipeline(m.pretrained, device=device, variant=m.variant)
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    noise_scheduler = _noise_scheduler(pipe)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(bool(m.train_text_encoder))
    unet.requires_grad_(True)
    times = {}
    sources, prompts, reg_written = _sources(cfg, pipe, instance_paths, accelerator, show, times)
    hooks = RunHooks(rank, world, reg_written, sources)

    latent_shape = vae_latent_shape(vae, d.resolution)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    if not m.train_text_encoder:                # frozen: embed the (two) prompts once, not every step
        with torch.no_grad():
            fixed_embeds = text_encoder(ids)[0]

    from .models.lora import add_lora, trainable_parameters
    add_lora(cfg, unet, text_encoder)
    _configure(cfg, unet, text_encoder)
    parts = {"unet": unet, "text_encoder": text_encoder, "vae": vae}
    kept = half_frozen(cfg, parts, device)     # GPU + 16/bf16: frozen weights in half, their float32 on the CPU
    params = trainable_parameters(cfg, unet, text_encoder)
    optimizer = make_optimizer(cfg, params, device)
    modules = {"unet": unet, "text_encoder": text_encoder} if m.train_text_encoder else {"unet": unet}
    begin = start_point(cfg, accelerator, modules, optimizer, lr_lambda(cfg))   # checkpoint, saved pipeline or 0
    start, history, lr_sched = begin.step, begin.history, begin.lr_sched
    unet_p = accelerator.prepare(unet)
    te_p = accelerator.prepare(text_encoder) if m.train_text_encoder else text_encoder
    # through accelerate, as diffusers' scripts do: with fp16 its GradScaler unscales the gradients (before clipping),
    # skips a step that overflowed and adapts the scale. The lr schedule is not prepared: accelerate would step it
    # once per process (and not on a skipped step); here it is a function of the step number (see models/precision.py)
    optimizer = accelerator.prepare(optimizer)
    if m.compile:
        unet_p = torch.compile(unet_p)
    from .runs.validation import Validator
    validator = Validator(cfg, pipe, accelerator, start, begin.finished)   # samples along the way, trackers
    t_loop = time.time()
    validator(start)                            # step 0: the base model (resumed: done already, kept)
    bar = tqdm(range(start, tr.max_steps), initial=start, total=tr.max_steps, desc="train", disable=not show,
               mininterval=1)
    saves = RunCheckpoints(cfg, accelerator, modules, optimizer, lr_sched, history, begin)   # and Ctrl-C
    try:
        for step in bar:
            if not unet.training:             # a callback may have sampled in eval mode (.train() costs ~1 ms)
                unet_p.train()
            z, noise, t, embeds_idx, picked = draw_batch(sources, tr.seed, step, rank, world, tr.batch_size,
                                                         latent_shape, num_timesteps, device)
            hooks.drew(step, picked)
            noisy = noise_scheduler.add_noise(z, noise, t)
            with accelerator.autocast():
                enc = te_p(ids)[0] if m.train_text_encoder else fixed_embeds
                enc = enc[torch.tensor(embeds_idx, device=device)]
                pred = unet_p(noisy, t, enc).sample
            target = noise if noise_scheduler.config.prediction_type == "epsilon" \
                else noise_scheduler.get_velocity(z, noise, t)
            loss, inst_loss, prior_loss = dreambooth_loss(pred, target, prior, m.prior_loss_weight)
            logged = global_losses(accelerator, loss, inst_loss, prior_loss, step, out)
            scale = loss_scale(accelerator)     # None unless fp16 on CUDA
            accelerator.backward(loss)
            if cfg.optim.max_grad_norm:
                clip_gradients(accelerator, params, cfg.optim.max_grad_norm)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            rec = {"step": step + 1, "loss": logged[0].item(), "instance_loss": logged[1].item(),
                   "prior_loss": logged[2].item(), "lr": lr_sched.get_last_lr()[0],
                   **scaler_record(accelerator, scale, step + 1, out)}
            history.append(rec)
            bar.set_postfix(instance=f"{rec['instance_loss']:.3f}", prior=f"{rec['prior_loss']:.3f}", refresh=False)
            validator.step(rec)                 # log to trackers; validate every trainer.validation.every steps
            if callback:
                callback(rec)
            saves.maybe_save(step + 1)
            hooks.step_done()
            saves.on_interrupt(step + 1)
    finally:                                    # a second Ctrl-C stops at once, keeping the last checkpoint
        saves.close()
        validator.close()                       # the trackers' files complete, also when training stopped
    bar.close()
    times["training"], t_save = time.time() - t_loop, time.time()   # the steps, with the samples along the way
    _finish(accelerator, pipe, parts, kept, saves, hooks, validator.made)
    times["saving"] = time.time() - t_save
    return TrainResult(out, history, time.time() - t0, pipe, saved=not begin.finished, start=start, times=times)


def _finish(accelerator, pipe, parts: dict, kept: dict, saves, hooks, validated: list) -> None:
    """After the last step: the frozen weights back in float32, the final pipeline saved (checkpoints removed), LoRA
    fused, the processes' group closed, the modules in eval mode: every process returns the pipeline as saved."""
    restore_frozen(parts, kept)                 # the saved and returned pipeline: float32, frozen parts as loaded
    saves.finish(pipe)
    from .models.lora import fuse_lora
    fuse_lora(pipe)                             # LoRA: every process returns the pipeline as saved (fused)
    hooks.finish(validated)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        accelerator.end_training()              # destroy the process group before exit (gloo aborts otherwise)
    for mod in (parts["unet"], parts["text_encoder"]):
        mod.eval()


def _noise_scheduler(pipe):
    """The checkpoint's own training noise schedule and prediction type (epsilon or v_prediction)."""
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config(pipe.scheduler.config)
