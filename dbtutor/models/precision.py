"""Mixed precision on the run's device: the Accelerator (fp16 loss scaling), the optimizer (fused AdamW or 8-bit
AdamW), and the frozen weights in half precision on a GPU.

trainer.precision=16 on a CUDA GPU trains with autocast in float16 and accelerate's GradScaler: the loss is
multiplied by a scale (65,536 at first) before the backward pass so that small gradients survive float16, the
optimizer (prepared by accelerate) divides the gradients by it again before clipping and stepping, and a step whose
gradients overflowed (inf or NaN) is skipped: the weights and AdamW's moments stay as they were and the scale halves.
A skipped step keeps its place in the lr schedule and is recorded with "skipped": true. bf16 and 32 need no scale.
"""
from __future__ import annotations

import torch

from ..core.errors import ConfigError, TrainingError
from ..core.hooks import device_kind

MIXED_PRECISION = {"32": "no", "bf16": "bf16", "16": "fp16"}       # trainer.precision -> accelerate's name
HALF = {"16": torch.float16, "bf16": torch.bfloat16}
INSTALL_8BIT = "pip install 'dbtutor[gpu]' (or pip install bitsandbytes)"


def check_precision(cfg, device: torch.device):
    """Preflight: the precision and optimizer the config asks for exist on this device (one line if not)."""
    if cfg.trainer.precision == "16" and device_kind(device) != "cuda":
        raise ConfigError("trainer.precision=16 needs a CUDA GPU; on a CPU use 32 or bf16")
    if cfg.optim.use_8bit_adam:
        _bitsandbytes(device)


def _bitsandbytes(device: torch.device):
    """bitsandbytes, imported only when optim.use_8bit_adam asks for it (an optional extra, CUDA only)."""
    try:
        import bitsandbytes
    except Exception as e:                       # ImportError, or a broken install that fails while loading
        why = "is not installed" if isinstance(e, ImportError) else f"does not load ({type(e).__name__})"
        raise ConfigError(f"optim.use_8bit_adam=true needs bitsandbytes, which {why}: {INSTALL_8BIT}, or set "
                          "optim.use_8bit_adam=false") from None
    if device_kind(device) != "cuda":
        raise ConfigError(f"optim.use_8bit_adam=true needs a CUDA GPU (bitsandbytes' 8-bit AdamW); on this "
                          f"{device.type} set optim.use_8bit_adam=false")
    return bitsandbytes


def make_optimizer(cfg, params, device) -> torch.optim.Optimizer:
    """AdamW; fused (one kernel over all tensors) on CPU and CUDA: on a CPU about 5x faster than the default
    per-tensor loop, which otherwise costs as much as the UNet's backward when the text encoder trains (bench/).

    optim.use_8bit_adam: bitsandbytes' AdamW8bit, which keeps AdamW's two moments in 8 bits (block-wise quantized):
    2 bytes per trained parameter instead of 8, so 1.6 GiB instead of 6.4 GiB for Stable Diffusion's UNet."""
    device = torch.device(device)
    if cfg.optim.use_8bit_adam:
        bnb = _bitsandbytes(device)
        return bnb.optim.AdamW8bit(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused or None)


def make_accelerator(cfg, device: torch.device, **kwargs):
    """The Accelerator of one run: mixed precision from trainer.precision (fp16 on CUDA brings accelerate's
    GradScaler); `kwargs` go to accelerate's Accelerator (train gives it the run's trackers).

    accelerate keeps one state per process and refuses an Accelerator with another precision or device once it has
    made one ("AcceleratorState has already been initialized"). With one process that state is reset first, so a
    second train() in the same notebook kernel may use another trainer.precision. Under a multi-process launch the
    state belongs to the launch: another precision there means launching again."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    if PartialState._shared_state.get("num_processes", 1) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision=MIXED_PRECISION[cfg.trainer.precision], cpu=device.type == "cpu",
                                  **kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        raise ConfigError(f"trainer.precision={cfg.trainer.precision} or trainer.device={cfg.trainer.device} differs "
                          "from what this multi-process launch started with: launch again (accelerate launch "
                          "--mixed_precision no|bf16|fp16 for 32|bf16|16)") from None
    if cfg.trainer.precision == "16" and device_kind(device) != device.type:   # a CPU counted as CUDA (core/hooks.py):
        accelerator.scaler = torch.amp.GradScaler(device.type)    # what Accelerator gives a CUDA device with fp16:
        accelerator.native_amp = True                             # its GradScaler, and autocast in float16
    return accelerator


def loss_scale(accelerator) -> float | None:
    """The GradScaler's current scale (fp16 on CUDA), or None when there is no loss scaling."""
    return accelerator.scaler.get_scale() if accelerator.scaler is not None else None


def scaler_record(accelerator, before: float | None, step: int, out) -> dict:
    """{'loss_scale', 'skipped'} for the history record of a step with loss scaling (empty without).

    The step was skipped iff the scale went down (GradScaler halves it exactly when it found inf/NaN gradients).
    accelerate's own optimizer.step_was_skipped cannot tell here: a fused AdamW receives the overflow flag and skips
    the update itself, so accelerate sees its step called every time. Gradients that still overflow once the scale
    has fallen below 1 are not a float16 range problem that scaling can fix: TrainingError."""
    if before is None:
        return {}
    now = loss_scale(accelerator)
    skipped = now < before
    if skipped and now < 1:
        raise TrainingError(f"the gradients are not finite at step {step} even with the fp16 loss scale down to "
                            f"{now:g}: lower optim.lr or use trainer.precision=32 (or bf16 on a GPU of compute "
                            f"capability 8.0 or newer); the last good checkpoint in {out / 'checkpoints'} is kept")
    return {"loss_scale": now, "skipped": skipped}


def half_frozen(cfg, modules, device) -> dict:
    """On a CUDA GPU with trainer.precision 16 or bf16: every frozen weight (the VAE; the text encoder unless it
    trains; with LoRA the base weights under the adapters) in that dtype, as diffusers' DreamBooth scripts do: half
    the memory, and autocast computes in that dtype anyway. Trained weights stay float32 (the optimizer's and the
    GradScaler's requirement). On a CPU or with precision 32 nothing changes and it returns {}.

    Returns what restore_frozen needs to put every halved weight back exactly: per weight its original dtype when
    casting the half tensor back restores it bit for bit (weights loaded from fp16 files, such as Stable Diffusion's
    fp16 variant, for float16), else a copy of the original on the CPU. So the CPU holds copies only of weights that
    half precision would round.

    `modules`: {name: module}, e.g. the pipeline's unet, text_encoder and vae."""
    dtype = HALF.get(cfg.trainer.precision)
    if dtype is None or device_kind(device) != "cuda":
        return {}
    kept = {}
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                half = p.data.to(dtype)
                exact = torch.equal(half.to(p.dtype), p.data)       # NaN compares unequal: then a copy is kept
                kept[(name, pname)] = p.dtype if exact else p.detach().to("cpu", copy=True)
                p.data = half
    return kept


def kept_bytes(kept: dict) -> int:
    """The CPU memory the copies of half_frozen's answer hold, in bytes."""
    return sum(v.numel() * v.element_size() for v in kept.values() if isinstance(v, torch.Tensor))


def restore_frozen(modules, kept: dict):
    """Put back the frozen weights half_frozen halved, bit-identical to the base model's: the saved and returned
    pipeline is float32 throughout."""
    for (name, pname), value in kept.items():
        p = modules[name].get_parameter(pname)
        p.data = p.data.to(value) if isinstance(value, torch.dtype) else value.to(p.device)
