"""Where a model is: a local pipeline folder, or a hub id's download in the Hugging Face cache (fetched as
StableDiffusionPipeline.from_pretrained fetches it: only what is missing; offline, the cached copy as it is), and
the one fingerprint of a model's weights."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import warnings
from pathlib import Path

from ..core.errors import ConfigError
from ..core.fileio import sha256_file
from .weight_files import BadFile, read_json

SD = "a Stable Diffusion 1.x/2.x pipeline folder (unet, vae, text_encoder, tokenizer, scheduler)"


@contextlib.contextmanager
def quiet():
    """The libraries' own warnings (unknown config keys, deprecations) stay out of the one line we print."""
    levels = {}
    for lib in ("diffusers", "transformers", "huggingface_hub"):
        log = importlib.import_module(f"{lib}.utils.logging")
        levels[log] = log.get_verbosity()
        log.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in levels.items():
            log.set_verbosity(level)


def locate(pretrained, name: str = "model.pretrained", variant: str | None = None) -> tuple[Path, Path | None]:
    """The local folder to check and load, and for a hub id its cache entry (models--org--name). A hub id is
    fetched as StableDiffusionPipeline.from_pretrained would (only what is missing; offline: the cached copy), in
    `variant` (model.variant: "fp16" fetches SD v1.5's half-size weights) for the parts that have one."""
    text = str(pretrained)
    given = f"{name} {text}" if name.startswith("-") else f"{name}={text}"     # an option, or a config key
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{given} is a file, not a folder: point it at {SD}")
        if not (p / "model_index.json").is_file():
            single = p / "config.json"
            held = ""
            if single.is_file():
                try:
                    held = f" (it holds one {read_json(single).get('_class_name') or 'model'}, not a whole pipeline)"
                except BadFile:
                    pass
            raise ConfigError(f"{given} is a folder without model_index.json{held}: point it at a diffusers "
                              "Stable Diffusion pipeline folder")
        return p, None
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise ConfigError(f"{given}: no such folder")
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import constants
    entry = Path(constants.HF_HUB_CACHE) / ("models--" + text.replace("/", "--"))
    try:
        with quiet():
            folder = StableDiffusionPipeline.download(text, safety_checker=None, feature_extractor=None, variant=variant)
    except Exception as e:          # offline and not cached, a download cut off, no such repository, ...
        if entry.is_dir():
            partial = len(list(entry.glob("blobs/*.incomplete")))
            raise ConfigError(f"{given}: its download from the Hugging Face Hub is incomplete (the cache {entry} "
                              f"holds part of it{f', {partial} files half written' if partial else ''}; "
                              f"{type(e).__name__}): run again while online (HF_HUB_OFFLINE unset) to finish it, or "
                              f"delete {entry} to download it afresh") from None
        raise ConfigError(f"{given} is neither a local folder nor reachable on the Hugging Face Hub "
                          f"({type(e).__name__}); use a local pipeline folder such as data/models/toyworld") from None
    return Path(folder), entry


def stock_variant(pretrained, variant: str | None) -> str | None:
    """The `variant` to give diffusers' own from_pretrained for a model dbtutor loads in `variant` (model.variant):
    it for a hub id (fetched in it) or a folder that has its files, else None (diffusers refuses a variant that a
    folder has no files of; dbtutor loads the main ones)."""
    folder = Path(str(pretrained)).expanduser()
    return variant if variant and (not folder.is_dir() or any(folder.glob(f"*/*.{variant}.*"))) else None


def model_fingerprint(pretrained: str) -> str:
    """A local pipeline folder: sha256 of its weight and config files, so a retrained model at the same path is
    noticed (as the latent cache notices a new VAE). A hub id stands for itself."""
    folder = Path(pretrained)
    if not folder.is_dir():
        return str(pretrained)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    stamp = (str(folder.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _FINGERPRINTS:              # hashing a 4 GB model takes seconds: once per unchanged folder
        listing = "\n".join(f"{f.relative_to(folder).as_posix()} {sha256_file(f)}" for f in files)
        _FINGERPRINTS[stamp] = hashlib.sha256(listing.encode()).hexdigest()[:16]
    return _FINGERPRINTS[stamp]


_FINGERPRINTS: dict = {}
