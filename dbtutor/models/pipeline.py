"""Load a Stable Diffusion pipeline (local folder or hub id) in float32, every weight checked, and sample from it."""
from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..core.fileio import atomic_path
from ..core.hooks import device_kind

SCHEDULERS = {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
              "euler": "EulerDiscreteScheduler"}
# images of this side or larger are decoded one at a time (VAE slicing): one 512 px decode in float32 holds about
# 1 GB of activations, so a batch of 25 would need 25 GB. Below it batches stay whole: at 64 px (1/64 of the pixels)
# 25 images take about 0.4 GB, and decoding them one by one on a CPU takes 1.3-1.5x as long and changes pixels by
# up to 1 level (python bench/vae_slicing.py).
SLICE_FROM_PX = 256


def sampling_dtype(device) -> torch.dtype:
    """The dtype a pipeline that only samples is loaded in: float16 on a CUDA GPU (half the memory, tensor cores,
    what diffusers samples in there), float32 elsewhere."""
    return torch.float16 if device_kind(device) == "cuda" else torch.float32


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


def check_pretrained(pretrained, name: str = "model.pretrained", variant: str | None = None) -> Path:
    """Fail fast, in one line, if model.pretrained is not a sound Stable Diffusion pipeline (a folder, or a hub id's
    download, fetched in `variant`): see model_check. Returns the local folder to load."""
    from .model_check import check_model
    return check_model(pretrained, name, variant=variant)


def is_run(folder) -> bool:
    """Whether `folder` holds a trained run: a saved pipeline, or a LoRA run's adapters with its config."""
    from .lora import WEIGHT_NAME
    folder = Path(folder)
    return (folder / "model_index.json").exists() or \
        ((folder / WEIGHT_NAME).exists() and (folder / "dreambooth.yaml").exists())


def load_trained(folder, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 variant: str | None = None):
    """A trained run's model: its saved pipeline, or for a LoRA run saved as adapters alone
    (model.lora.save_merged=false) its base model (model.pretrained of its dreambooth.yaml, in its model.variant
    unless `variant` is given) with them merged in. A folder that is not a run loads as a pipeline, in `variant`."""
    from .lora import fuse_lora, load_lora
    folder = Path(folder)
    if (folder / "model_index.json").exists() or not is_run(folder):
        return load_pipeline(folder, device=device, dtype=dtype, variant=variant)
    from omegaconf import OmegaConf
    model = OmegaConf.load(folder / "dreambooth.yaml").model
    base, variant = model.pretrained, variant or OmegaConf.select(model, "variant", default=None)
    check_pretrained(base, f"{folder}/dreambooth.yaml's model.pretrained", variant)
    pipe = load_pipeline(base, device=device, dtype=dtype, variant=variant)
    return fuse_lora(load_lora(pipe, folder))


# the top-level modules of a CLIP text model; Stable Diffusion's checkpoints (and transformers 4) keep them under
# text_model., transformers 5 saves them without it and reads both
CLIP_TEXT_PREFIX, CLIP_TEXT_TOPS = "text_model.", ("embeddings.", "encoder.", "final_layer_norm.")
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def sd_layout(folder) -> list[str]:
    """Make a pipeline folder that transformers 5 saved readable by every supported transformers, as Stable
    Diffusion's own folders are: the text encoder's keys under text_model., and vocab.json + merges.txt beside
    tokenizer.json (transformers 4's CLIPTokenizer reads only those). Returns the parts it rewrote."""
    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise ConfigError(f"{folder}: no model_index.json; give a diffusers Stable Diffusion pipeline folder")
    return [name for name, fix in (("text_encoder", _text_encoder_keys), ("tokenizer", _tokenizer_files))
            if (folder / name).is_dir() and fix(folder / name)]


def _text_encoder_keys(te: Path) -> bool:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    if (te / "model.safetensors.index.json").exists():
        raise ConfigError(f"{te}: a sharded text encoder; save it as one file (save_pretrained(max_shard_size='10GB'))")
    file, config = te / "model.safetensors", te / "config.json"
    if not file.exists() or json.loads(config.read_text()).get("model_type") != "clip_text_model":
        return False                                  # .bin only, or not CLIP: nothing to rename
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {"format": "pt"}
        if not any(k.startswith(CLIP_TEXT_TOPS) for k in f.keys()):
            return False
    state = {(CLIP_TEXT_PREFIX + k if k.startswith(CLIP_TEXT_TOPS) else k): v for k, v in load_file(str(file)).items()}
    with atomic_path(file) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return True


def _tokenizer_files(tok: Path) -> bool:
    """vocab.json and merges.txt from tokenizer.json's BPE model, byte for byte as CLIP's own files."""
    if not (tok / "tokenizer.json").exists() or all((tok / n).exists() for n in SLOW_TOKENIZER_FILES):
        return False
    bpe = json.loads((tok / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    if bpe.get("type") != "BPE":
        return False
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    with atomic_path(tok / "vocab.json") as tmp:
        tmp.write_text(json.dumps(bpe["vocab"], ensure_ascii=False), encoding="utf-8")
    with atomic_path(tok / "merges.txt") as tmp:
        tmp.write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return True


def _check_tokenizer(folder, index: dict, label: str) -> None:
    """transformers 4's CLIPTokenizer cannot read a tokenizer folder saved by transformers 5 (tokenizer.json only)."""
    tok = Path(folder) / "tokenizer"
    if int(_version("transformers")[0]) < 5 and index.get("tokenizer", [None])[-1] == "CLIPTokenizer" \
            and (tok / "tokenizer.json").exists() and not all((tok / n).exists() for n in SLOW_TOKENIZER_FILES):
        raise ConfigError(f"{label}: tokenizer/ holds only tokenizer.json (saved by transformers 5), which "
                          f"transformers 4's CLIPTokenizer cannot read: run `dbtutor fix-layout {folder}` once "
                          "(or pip install -U 'transformers>=5')")


def _version(library: str) -> tuple[int, ...]:
    from packaging.version import Version
    return Version(importlib.import_module(library).__version__).release


def load_checked(folder, name: str, library: str, class_name: str, label: str | None = None, checked: bool = False,
                 variant: str | None = None):
    """One weight-bearing part of a pipeline folder, checked first (model_check; `checked`: the caller did) and
    refused (ConfigError) if any of its weights is missing, unused or misshapen: transformers and diffusers only
    log such weights (left random) as a warning. `label` names the model in messages (default: the folder).
    `variant` (model.variant): its weights files where the part has them, else the main ones."""
    from .weight_files import file_variant, weights_file
    label = str(label or folder)
    if not checked:
        from .model_check import check_model
        check_model(folder, parts=(name,), variant=variant)
    cls = getattr(importlib.import_module(library), class_name)
    file = weights_file(Path(folder) / name, library, variant)
    kwargs = {"subfolder": name, "output_loading_info": True}
    if file_variant(file, variant):                   # the part has the variant's files: load those
        kwargs["variant"] = variant
    sharded = file.name.startswith("diffusion_pytorch_model.safetensors.index")
    if library == "diffusers" and _version("diffusers") < (0, 33) and not sharded:
        kwargs["low_cpu_mem_usage"] = False           # before 0.33 only this path reports unused weights (and
                                                      # reads no shards: those have their shapes checked first)
    log = importlib.import_module(f"{library}.utils.logging")
    level = log.get_verbosity()
    log.set_verbosity_error()                         # their multi-line warning about such weights: ours is below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(str(folder), **kwargs)
    except Exception as e:              # what the checks did not foresee: still one line, naming the part
        raise _unloadable(label, name, e) from None
    finally:
        log.set_verbosity(level)
    missing, unused = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    odd = len(info.get("mismatched_keys") or [])
    if not (missing or unused or odd):
        return model
    here = importlib.import_module(library).__version__
    saved = getattr(model.config, "transformers_version", None) if library == "transformers" else \
        dict(model.config).get("_diffusers_version")
    if library == "transformers" and missing and set(missing) == {CLIP_TEXT_PREFIX + k for k in unused}:
        todo = (f"it has the key layout of transformers 5, which transformers {here} cannot read: run `dbtutor "
                f"fix-layout {folder}` once (or pip install -U 'transformers>=5')")
    elif saved and saved != here:
        todo = f"it was saved by {library} {saved}: load it with that version (pip install '{library}=={saved}')"
    else:
        todo = f"the file does not fit {class_name}: replace {name}/ with a complete copy of that part"
    raise ConfigError(f"{label}: {name} would load with random weights ({len(missing)} missing, {len(unused)} in "
                      f"the file unused, {odd} of the wrong shape, e.g. {(missing + unused + ['?'])[0]}); {todo}")


def _unloadable(label: str, name: str, e: Exception) -> ConfigError:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return ConfigError(f"{label}: {name} cannot be loaded ({type(e).__name__}: {text}); replace {name}/ with a "
                       "complete copy of that part, or download the model again")


def load_pipeline(pretrained: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  variant: str | None = None):
    """StableDiffusionPipeline.from_pretrained, every component cast to `dtype` (float32 by default), no safety checker.

    The folder (or a hub id's download) is checked first, file by file (model_check); then the UNet, VAE and text
    encoder are loaded, each refused in one line (ConfigError) if any of its weights would be left random.
    transformers keeps a text encoder stored in fp16 in fp16; a float32 UNet on a CPU then fails, so we cast.
    `variant` (model.variant, e.g. "fp16": SD v1.5's half-size files) is fetched and loaded for the parts that have
    it; a part without it loads its main weights, so a folder saved without variants loads as it is."""
    from diffusers import StableDiffusionPipeline
    folder = check_pretrained(pretrained, variant=variant)
    index = StableDiffusionPipeline.load_config(str(folder))
    _check_tokenizer(folder, index, str(pretrained))
    parts = {name: load_checked(folder, name, *index[name], label=str(pretrained), checked=True, variant=variant)
             for name in ("unet", "vae", "text_encoder")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False, torch_dtype=dtype, **parts)
    except Exception as e:              # the tokenizer or the scheduler, past every check: still one line
        raise _unloadable(str(pretrained), "the tokenizer or scheduler", e) from None
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

    `prompts` and `seeds` are broadcast: one prompt with many seeds, or one seed per prompt. On a CUDA GPU sampling
    runs under float16 autocast (tensor cores), so a float32 pipeline such as the one train() trains needs no float16
    copy of its own. Images of SLICE_FROM_PX or more are decoded one at a time."""
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
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    if shape[-1] * pipe.vae_scale_factor >= SLICE_FROM_PX:
        pipe.vae.enable_slicing()
    half = device_kind(device) == "cuda"  # also a pipeline whose parts differ in dtype (frozen weights in half)
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        with torch.autocast(device.type, dtype=torch.float16) if half else contextlib.nullcontext():
            out = pipe(prompts[i:i + batch_size], num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, latents=latents,
                       negative_prompt=negative_prompt and [negative_prompt] * len(gens))
        images += out.images
    return images


@torch.no_grad()
def _text_outputs(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's output for each prompt, every token position (what cross-attention reads)."""
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].float().cpu()


def text_shift(pipe, prompt: str, others: list[str] | str) -> list[float]:
    """How far each of `others` moves the text encoder's output away from `prompt`'s: relative L2 distance over
    every token position, |E(other) - E(prompt)| / |E(prompt)|. This is what the UNet's cross-attention reads, so
    an identifier that moves it as little as no word at all cannot select anything (notebook 02)."""
    others = [others] if isinstance(others, str) else list(others)
    emb = _text_outputs(pipe, [prompt] + others)
    return [float((e - emb[0]).norm() / emb[0].norm()) for e in emb[1:]]


def text_moved(before, after, prompts: list[str] | str) -> list[float]:
    """How far training moved each prompt's text-encoder output: |E_after(p) - E_before(p)| / |E_before(p)|, for
    two pipelines with the same tokenizer (e.g. the base model and a run that trained its text encoder)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    a, b = _text_outputs(before, prompts), _text_outputs(after, prompts)
    return [float((y - x).norm() / x.norm()) for x, y in zip(a, b)]
