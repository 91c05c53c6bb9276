"""Stable Diffusion v1.5's architecture, randomly initialised: its published component configs (or a narrow copy of
the same block layout, for tests), built offline."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..core.config import ROOT
from ..core.errors import ConfigError

# The configs of stable-diffusion-v1-5/stable-diffusion-v1-5 (unet/, vae/, text_encoder/, scheduler/ config.json),
# spelled out: nothing here is downloaded. Keys left at the library defaults are the published values too.
UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
    "downsample_padding": 1, "mid_block_scale_factor": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "center_input_sample": False,
}
VAE_CONFIG = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
# CLIP ViT-L/14's text tower. Its published token ids (bos 0, eos 2, pad 1) are the original CLIP config's
# quirk; they only select transformers' legacy pooling (argmax of the ids), which Stable Diffusion never reads.
TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5, "initializer_factor": 1.0, "initializer_range": 0.02, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
MAX_TOKENS = 77                                       # the tokenizer's model_max_length = the text encoder's positions
# the parameter counts of the published weights
PUBLISHED_PARAMS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
TOKENIZER = ROOT / "data" / "models" / "toyworld" / "tokenizer"   # the real CLIP BPE vocabulary (49,408 tokens)
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
# "small": the same block layout (four UNet levels, cross-attention in the first three, two layers per block; an 8x
# VAE of four levels; a CLIP text tower), narrow enough to train on a CPU in seconds. Its weights have SD v1.5's
# key names, so conversions and loaders that work on it work on the real model's layout.
SMALL = {
    "unet": {"block_out_channels": (16, 32, 64, 64), "cross_attention_dim": 32, "attention_head_dim": 2,
             "norm_num_groups": 8, "sample_size": 8},
    "vae": {"block_out_channels": (16, 32, 64, 64), "norm_num_groups": 8, "sample_size": 64},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "projection_dim": 32},
}
SIZES = ("full", "small")


def configs(size: str = "full") -> dict:
    """The UNet, VAE and text-encoder configs of `size` ('full': SD v1.5's own; 'small': narrow, same layout)."""
    if size not in SIZES:
        raise ConfigError(f"size={size} is not one of {', '.join(SIZES)}")
    small = SMALL if size == "small" else {"unet": {}, "vae": {}, "text_encoder": {}}
    return {"unet": {**UNET_CONFIG, **small["unet"]}, "vae": {**VAE_CONFIG, **small["vae"]},
            "text_encoder": {**TEXT_ENCODER_CONFIG, **small["text_encoder"]}}


def build_models(device: str | torch.device = "cpu", seed: int = 0, size: str = "full") -> dict:
    """The UNet, VAE and CLIP text encoder of SD v1.5, randomly initialised from `seed` (the global RNG is left as
    it was). On device 'meta' nothing is allocated: the shapes alone, in a fraction of a second."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    c = configs(size)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return {"unet": UNet2DConditionModel(**c["unet"]), "vae": AutoencoderKL(**c["vae"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**c["text_encoder"])).eval()}


def parameter_counts(models: dict) -> dict:
    """{'unet': n, 'text_encoder': n, 'vae': n}: parameters of each part (buffers not counted)."""
    return {name: sum(p.numel() for p in models[name].parameters()) for name in PUBLISHED_PARAMS}


def load_tokenizer(folder: str | Path = TOKENIZER):
    """The shipped CLIP BPE tokenizer, with SD's 77-token context (the embedded model's folder says 32)."""
    from transformers import CLIPTokenizer
    folder = Path(folder)
    if not (folder / "vocab.json").exists() or not (folder / "merges.txt").exists():
        raise ConfigError(f"{folder}: no vocab.json + merges.txt; give a CLIP tokenizer folder such as {TOKENIZER}")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)


def build_pipeline(seed: int = 0, tokenizer: str | Path = TOKENIZER, size: str = "full"):
    """A StableDiffusionPipeline of SD v1.5's architecture, random weights (float32), no safety checker."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    models = build_models("cpu", seed, size)
    return StableDiffusionPipeline(**models, tokenizer=load_tokenizer(tokenizer),
                                   scheduler=PNDMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_random_pipeline(folder: str | Path, seed: int = 0, dtype: str = "fp16",
                         tokenizer: str | Path = TOKENIZER, size: str = "full") -> dict:
    """Build SD v1.5 with random weights and save it into `folder` in the layout dbtutor saves (safetensors, the
    text encoder's keys under text_model., vocab.json + merges.txt), which load_pipeline checks weight by weight.
    `dtype` 'fp16' halves the disk (2.1 GB instead of 4.3 GB); load_pipeline casts to float32 either way.
    Returns the parameter counts."""
    from .pipeline import sd_layout
    folder = Path(folder)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype} is not one of {', '.join(DTYPES)}")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty: delete it or choose another folder")
    pipe = build_pipeline(seed, tokenizer, size)
    counts = parameter_counts({n: getattr(pipe, n) for n in PUBLISHED_PARAMS})
    pipe.to(DTYPES[dtype])
    tmp = folder.with_name(f".{folder.name}.tmp")     # written whole, then renamed: never a half pipeline
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    sd_layout(tmp)
    (tmp / "README.md").write_text(
        f"Stable Diffusion v1.5's architecture ({size} size) with RANDOM weights (seed {seed}, {dtype}), made by "
        "dbtutor.models.sd15.save_random_pipeline for measuring speed and memory at full size. It draws noise.\n")
    if folder.exists():
        folder.rmdir()                                # empty (checked above)
    os.replace(tmp, folder)
    return counts

