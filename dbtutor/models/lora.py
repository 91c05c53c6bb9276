"""LoRA DreamBooth with peft: adapters on the UNet's (and text encoder's) attention projections.

model.lora.rank = 0 is full fine-tuning. With rank r > 0 the base weights stay frozen and each targeted Linear W
gets a trainable low-rank update (alpha / r) * B @ A, with A (r x in) and B (out x r); B starts at zero, so
training starts from the base model exactly. What is written at the end (see checkpoint.save_pipeline):

- output_dir/pytorch_lora_weights.safetensors: the adapters alone, in the stock diffusers format, with the scale
  alpha / r folded into B: every diffusers version reads a file without metadata as alpha = r, so alpha != rank
  loads right in all of them. Stock use: load the BASE model, then
  `pipe.load_lora_weights(output_dir, weight_name="pytorch_lora_weights.safetensors")` (diffusers 0.30 refuses a
  folder without weight_name when offline, HF_HUB_OFFLINE=1). `dbtutor export` writes the same adapters in kohya's
  layout for the web UIs.
- output_dir/{unet,text_encoder,...}: the base pipeline with the adapters fused (merged) into its weights, so
  `StableDiffusionPipeline.from_pretrained(output_dir)` (and `dbtutor sample`) gives the trained model directly.
  Do not also call load_lora_weights(output_dir) on that pipeline: the update would be applied twice.

Checkpoints hold only the adapter weights and their optimizer state (a few hundred KB to a few MB).

The text encoder's adapters are injected with peft itself (peft.inject_adapter_in_model), not through
transformers' add_adapter: transformers 5.24 refuses every peft release up to 0.21 (it asks for >= 0.22), and
the layers, keys and file are the same either way. For the same reason stock `pipe.load_lora_weights` cannot load
a text-encoder LoRA with these versions; `load_lora(pipe, folder)` below does the stock call and, only where
transformers refuses, loads the text-encoder half with peft directly.
"""
from __future__ import annotations

from pathlib import Path

import torch

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config(cfg, targets):
    from peft import LoraConfig
    r = cfg.model.lora.rank
    return LoraConfig(r=r, lora_alpha=cfg.model.lora.alpha or r, init_lora_weights="gaussian", target_modules=targets)


def add_lora(cfg, unet, text_encoder):
    """model.lora.rank > 0: freeze the base weights and add trainable LoRA adapters (peft).

    The random init of A is seeded by trainer.seed (without touching the global RNG), so every process and every
    run starts from the same adapters."""
    if not cfg.model.lora.rank:
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.trainer.seed)
        unet.requires_grad_(False)
        unet.add_adapter(lora_config(cfg, UNET_TARGETS))
        if cfg.model.train_text_encoder:
            text_encoder.requires_grad_(False)
            _inject(text_encoder, lora_config(cfg, TEXT_TARGETS))


def _inject(text_encoder, config):
    """What transformers' add_adapter does, without its peft version gate: the adapter layers and peft_config."""
    from peft import inject_adapter_in_model
    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}


def trainable_parameters(cfg, unet, text_encoder) -> list:
    mods = [unet] + ([text_encoder] if cfg.model.train_text_encoder else [])
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def has_lora(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def adapter_state(module) -> dict:
    """The adapter tensors of a module with LoRA layers, under their state_dict names (for checkpoints)."""
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


def load_adapter_state(module, state: dict, source: str):
    """Load the tensors written by adapter_state; every adapter tensor must be there and nothing else."""
    from ..core.errors import ConfigError
    want = set(adapter_state(module))
    if set(state) != want:
        odd = sorted(set(state) ^ want)
        raise ConfigError(f"{source} does not hold this model's LoRA adapters ({len(odd)} keys differ, e.g. "
                          f"{odd[0]}): use another output_dir, or trainer.resume=false to start over")
    module.load_state_dict(state, strict=False)


def _folded(module) -> dict:
    """The module's adapters in diffusers' names, each B scaled by alpha / r, to be read with alpha = r."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    config = module.peft_config["default"]
    scale = config.lora_alpha / config.r
    state = {k: v * scale if "lora_B" in k else v for k, v in get_peft_model_state_dict(module).items()}
    return convert_state_dict_to_diffusers(state)


# diffusers' names of the adapter halves (text encoder, then UNet) -> peft's, as adapter_state names them
_DIFFUSERS_TO_PEFT = ((".lora_linear_layer.down.", ".lora_A.default."), (".lora_linear_layer.up.", ".lora_B.default."),
                      (".lora.down.", ".lora_A.default."), (".lora.up.", ".lora_B.default."))


def load_saved_adapters(module, folder, part: str):
    """Load `part`'s ("unet" or "text_encoder") adapters from folder/pytorch_lora_weights.safetensors, as save_lora
    wrote them, into a module add_lora prepared (to continue a finished LoRA run): _folded undone, alpha / r taken
    out of B again. Every adapter tensor must be there (load_adapter_state)."""
    from safetensors.torch import load_file
    path = Path(folder) / WEIGHT_NAME
    config = module.peft_config["default"]
    scale = config.lora_alpha / config.r
    want, state = set(adapter_state(module)), {}
    for key, value in load_file(str(path)).items():
        if not key.startswith(part + "."):
            continue
        key = key[len(part) + 1:]
        for theirs, ours in _DIFFUSERS_TO_PEFT:
            key = key.replace(theirs, ours)
        if key not in want and key.removeprefix("text_model.") in want:   # transformers 5: no text_model.
            key = key.removeprefix("text_model.")
        state[key] = value / scale if ".lora_B." in key else value
    load_adapter_state(module, state, str(path))


def save_lora(pipe, cfg, folder):
    """Write pytorch_lora_weights.safetensors, which stock diffusers loads with pipe.load_lora_weights(folder).

    No LoraConfig metadata (diffusers 0.30 can neither write nor read it): alpha / r is in the weights."""
    if not cfg.model.lora.rank:
        return
    from diffusers import StableDiffusionPipeline
    kwargs = {"unet_lora_layers": _folded(pipe.unet)}
    if cfg.model.train_text_encoder:
        # CLIP's modules sit under text_model. in transformers 4 and at the top in 5; diffusers strips the prefix
        # when the model has none, so files written with it load into both
        kwargs["text_encoder_lora_layers"] = {k if k.startswith("text_model.") else f"text_model.{k}": v
                                              for k, v in _folded(pipe.text_encoder).items()}
    StableDiffusionPipeline.save_lora_weights(folder, weight_name=WEIGHT_NAME, safe_serialization=True, **kwargs)


def load_lora(pipe, folder):
    """Load output_dir/pytorch_lora_weights.safetensors into a BASE pipeline: stock `pipe.load_lora_weights`.

    Where transformers refuses the installed peft for the text encoder (see the module docstring), stock diffusers
    has loaded the UNet half already when it raises; the text-encoder half is then loaded with peft directly, with
    the rank and alpha of the file's metadata where an older dbtutor wrote them (else alpha = r)."""
    import inspect
    try:
        pipe.load_lora_weights(folder, weight_name=WEIGHT_NAME)
        return pipe
    except ValueError as e:
        if "version of PEFT" not in str(e):
            raise
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft import LoraConfig, set_peft_model_state_dict
    ask = "return_lora_metadata" in inspect.signature(pipe.lora_state_dict).parameters   # not in diffusers 0.30
    got = pipe.lora_state_dict(folder, weight_name=WEIGHT_NAME, **({"return_lora_metadata": True} if ask else {}))
    state, meta = got[0], (got[2] if len(got) > 2 else None) or {}
    te = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te))
    if not hasattr(pipe.text_encoder, "text_model"):
        te = {k.removeprefix("text_model."): v for k, v in te.items()}
    meta = {k.removeprefix("text_encoder."): v for k, v in meta.items() if k.startswith("text_encoder.")}
    r = next(v.shape[0] for k, v in te.items() if "lora_A" in k)
    _inject(pipe.text_encoder, LoraConfig(r=meta.get("r", r), lora_alpha=meta.get("lora_alpha", r),
                                          target_modules=meta.get("target_modules", TEXT_TARGETS)))
    result = set_peft_model_state_dict(pipe.text_encoder, te, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder}/{WEIGHT_NAME}: text-encoder keys that fit no layer, e.g. {result.unexpected_keys[0]}")
    return pipe


def fuse_lora(pipe):
    """Merge the adapters into the base weights and remove the peft layers: a plain pipeline again.

    Does nothing when the pipeline has no adapters (full fine-tuning, or already fused)."""
    parts = [n for n in ("unet", "text_encoder") if has_lora(getattr(pipe, n))]
    if not parts:
        return pipe
    pipe.fuse_lora(components=parts)
    pipe.unload_lora_weights()
    return pipe


def count_parameters(cfg, unet, text_encoder) -> int:
    """How many numbers training updates (after add_lora)."""
    return sum(p.numel() for p in trainable_parameters(cfg, unet, text_encoder))
