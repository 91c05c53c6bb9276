"""Load a Stable Diffusion pipeline (local folder or hub id) in float32, and sample from it in seeded batches."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from .errors import ConfigError
from .fileio import sha256_file

SCHEDULERS = {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
              "euler": "EulerDiscreteScheduler"}


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto")
    return torch.device(device)


def check_pretrained(pretrained: str) -> None:
    """Fail fast, in one line, if model.pretrained is neither a pipeline folder nor reachable on the Hub."""
    p = Path(str(pretrained)).expanduser()
    if p.exists():
        if not (p / "model_index.json").exists():
            raise ConfigError(f"model.pretrained={pretrained} is a folder without model_index.json: "
                              "point it at a diffusers Stable Diffusion pipeline folder")
        return
    if str(pretrained).startswith((".", "/", "~")) or os.sep in str(pretrained).strip("/").replace("/", "", 1):
        raise ConfigError(f"model.pretrained={pretrained}: no such folder")
    try:
        from huggingface_hub import hf_hub_download
        hf_hub_download(str(pretrained), "model_index.json")
    except Exception as e:
        raise ConfigError(f"model.pretrained={pretrained} is neither a local folder nor reachable on the Hugging Face "
                          f"Hub ({type(e).__name__}); use a local pipeline folder such as data/models/toyworld") from None


def model_fingerprint(pretrained: str) -> str:
    """A local pipeline folder: sha256 of its weight and config files, so a retrained model at the same path is
    noticed (as the latent cache notices a new VAE). A hub id stands for itself."""
    folder = Path(pretrained)
    if not folder.is_dir():
        return str(pretrained)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    listing = "\n".join(f"{f.relative_to(folder).as_posix()} {sha256_file(f)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def load_pipeline(pretrained: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """StableDiffusionPipeline.from_pretrained, every component cast to `dtype` (float32 by default), no safety checker.

    transformers keeps a text encoder stored in fp16 in fp16; a float32 UNet on a CPU then fails, so we cast."""
    from diffusers import StableDiffusionPipeline
    check_pretrained(pretrained)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(str(pretrained), safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False, torch_dtype=dtype)
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
        module.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe, name: str = "dpm"):
    """Swap the pipeline's sampler, keeping the checkpoint's noise schedule and prediction type."""
    import diffusers
    if name not in SCHEDULERS:
        raise ConfigError(f"model.sampling.scheduler={name} is not one of {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler).__name__ != cls.__name__:
        # DDIM's own default clip_sample=True clips the predicted latents to [-1, 1]: ruinous for a latent model
        # (Stable Diffusion's scheduler configs say false). A config without the key gets false here.
        extra = {"clip_sample": False} if "clip_sample" not in pipe.scheduler.config else {}
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return pipe


@torch.no_grad()
def sample(pipe, prompts: list[str] | str, seeds: list[int] | int = 0, num_inference_steps: int = 20,
           guidance_scale: float = 5.0, scheduler: str | None = "dpm", batch_size: int = 25, negative_prompt=None):
    """One image per (prompt, seed) pair, generated in batches; each image depends only on its own seed.

    `prompts` and `seeds` are broadcast: one prompt with many seeds, or one seed per prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(len(prompts))] if len(prompts) > 1 else [seeds]
    if len(prompts) == 1 and len(seeds) > 1:
        prompts = prompts * len(seeds)
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
    if scheduler:
        set_scheduler(pipe, scheduler)
    device = pipe.unet.device
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        out = pipe(prompts[i:i + batch_size], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   latents=latents, negative_prompt=negative_prompt and [negative_prompt] * len(gens))
        images += out.images
    return images


@torch.no_grad()
def text_shift(pipe, prompt: str, others: list[str] | str) -> list[float]:
    """How far each of `others` moves the text encoder's output away from `prompt`'s: relative L2 distance over
    every token position, |E(other) - E(prompt)| / |E(prompt)|. This is what the UNet's cross-attention reads, so
    an identifier that moves it as little as no word at all cannot select anything (notebook 02)."""
    others = [others] if isinstance(others, str) else list(others)
    ids = pipe.tokenizer([prompt] + others, padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    emb = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].float()
    return [float((e - emb[0]).norm() / emb[0].norm()) for e in emb[1:]]
