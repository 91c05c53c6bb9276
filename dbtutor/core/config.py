"""The config: NeMo's DreamBooth YAML structure, loaded with OmegaConf, with dotted key=value overrides."""
from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]         # the project folder (holds configs/, data/)
DEFAULT_CONFIG = ROOT / "configs" / "dreambooth.yaml"

if not OmegaConf.has_resolver("root"):
    with warnings.catch_warnings():          # omegaconf 2.4 renamed it register_resolver; 2.3 has only this one
        warnings.simplefilter("ignore")
        OmegaConf.register_new_resolver("root", lambda: str(ROOT))

CHOICES = {
    "trainer.precision": ("32", "bf16", "16"),
    "trainer.device": ("auto", "cpu", "cuda", "mps"),
    "model.attention": ("sdpa", "eager"),
    "model.sampling.scheduler": ("dpm", "ddim", "pndm", "euler"),
    "optim.lr_scheduler": ("constant", "cosine"),
}


def _flat_keys(node, prefix="") -> list[str]:
    keys = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, DictConfig):
            keys += _flat_keys(v, key + ".")
    return keys


def _unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not near:   # also try the last part alone: 'prior_weight' -> 'model.prior_loss_weight'
        tails = {k.split(".")[-1]: k for k in valid}
        hit = difflib.get_close_matches(key.split(".")[-1], list(tails), n=1, cutoff=0.6)
        near = [tails[hit[0]]] if hit else []
    hint = f"; did you mean '{near[0]}'?" if near else "; see configs/dreambooth.yaml for the valid keys"
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _check_keys(node: DictConfig, valid: list[str], source: str, prefix=""):
    for k, v in node.items_ex(resolve=False):          # resolving here would raise outside load_config's check
        key = f"{prefix}{k}"
        if key not in valid:
            raise _unknown_key_error(key, valid, source)
        if isinstance(v, DictConfig) and isinstance(_select_default(key), DictConfig):
            _check_keys(v, valid, source, key + ".")


_DEFAULTS: DictConfig | None = None


def defaults() -> DictConfig:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = OmegaConf.load(DEFAULT_CONFIG)
    return _DEFAULTS


def _select_default(key):
    return OmegaConf.select(defaults(), key, throw_on_missing=False)


def parse_overrides(overrides: Iterable[str] | dict | None) -> DictConfig:
    """['model.prior_loss_weight=0.5', ...] or {'model.prior_loss_weight': 0.5} -> a nested DictConfig."""
    if not overrides:
        return OmegaConf.create({})
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"override '{o}' is not key=value (for example model.prior_loss_weight=0.5)")
            k, v = o.split("=", 1)
            items.append((k.strip(), yaml_value(v)))
    cfg = OmegaConf.create({})
    for k, v in items:
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def yaml_value(text: str) -> Any:
    """Parse one override value as YAML (numbers, booleans, null), never as code. 2e-4 is a number here (YAML 1.1
    reads it as a string without a dot: 2.0e-4)."""
    if _EXPONENT.match(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict | None = None) -> DictConfig:
    """Defaults <- YAML file <- overrides; unknown keys are refused with the nearest valid key; values checked."""
    valid = _flat_keys(defaults())
    cfg = defaults().copy()
    layers = []
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} not found")
        try:
            layers.append((OmegaConf.load(path), str(path)))
        except Exception as e:   # yaml syntax
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    layers.append((parse_overrides(overrides), "the overrides"))
    for layer, source in layers:
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{source} must be a mapping of keys, like configs/dreambooth.yaml")
        _check_keys(layer, valid, source)
        cfg = OmegaConf.merge(cfg, layer)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the config: {str(e).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def validate(cfg: DictConfig):
    """Check values that need no files: types, ranges and combinations."""
    d = cfg.model.data
    cfg.trainer.precision = str(cfg.trainer.precision)
    for key, choices in CHOICES.items():
        value = str(OmegaConf.select(cfg, key))
        if value not in choices:
            raise ConfigError(f"{key}={value} is not one of {', '.join(choices)}")
    for key in ("model.data.resolution", "model.data.num_reg_images", "model.data.num_images_per_prompt",
                "trainer.max_steps", "trainer.batch_size", "trainer.checkpoint_every", "model.lora.rank",
                "model.sampling.card_seeds"):
        v = OmegaConf.select(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{key}={v} must be a whole number >= 0")
    for key in ("trainer.keep_checkpoints", "trainer.resume", "model.lora.save_merged", "optim.use_8bit_adam"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be true or false")
    if isinstance(cfg.model.variant, str) and cfg.model.variant.lower() in ("none", "null", ""):
        cfg.model.variant = None                          # as a command line writes a Python None
    variant = cfg.model.variant
    if variant is not None and not (isinstance(variant, str) and re.fullmatch(r"[A-Za-z0-9_]+", variant)):
        raise ConfigError(f"model.variant={variant} must be null (the main weights files) or a variant's name, e.g. fp16")
    wait = cfg.trainer.wait_for_lock
    if not isinstance(wait, (bool, int, float)) or wait < 0:
        raise ConfigError(f"trainer.wait_for_lock={wait} must be false (stop at once), true (wait) or seconds >= 0")
    if d.resolution <= 0 or d.resolution % 8:
        raise ConfigError(f"model.data.resolution={d.resolution} must be a positive multiple of 8 (the VAE downsamples)")
    if cfg.trainer.batch_size < 1 or d.num_images_per_prompt < 1:
        raise ConfigError("trainer.batch_size and model.data.num_images_per_prompt must be at least 1")
    for key in ("model.prior_loss_weight", "optim.lr"):
        v = OmegaConf.select(cfg, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{key}={v} must be a number >= 0")
    if not d.instance_dir or not d.instance_prompt:
        raise ConfigError("model.data.instance_dir and model.data.instance_prompt must be set")
    if cfg.model.with_prior_preservation:
        if not d.regularization_prompt:
            raise ConfigError("model.with_prior_preservation=true needs model.data.regularization_prompt "
                              "(the instance prompt without the identifier, e.g. 'a photo of a dog')")
        if not d.regularization_dir:
            raise ConfigError("model.with_prior_preservation=true needs model.data.regularization_dir "
                              "(a folder for the class images; it is filled automatically)")
        if d.num_reg_images < 1:
            raise ConfigError("model.with_prior_preservation=true needs model.data.num_reg_images >= 1")
    if cfg.model.use_cached_latents and d.cached_instance_dir and d.cached_reg_dir and \
            Path(d.cached_instance_dir).resolve() == Path(d.cached_reg_dir).resolve():
        raise ConfigError(f"model.data.cached_instance_dir and model.data.cached_reg_dir are both {d.cached_reg_dir}: "
                          "each cache prunes entries it does not own, so give them different folders")
    if cfg.model.use_cached_latents and not d.center_crop:
        raise ConfigError("model.use_cached_latents=true needs model.data.center_crop=true (a cache holds one crop "
                          "per image); or set model.use_cached_latents=false for random crops")
    if not cfg.output_dir:
        raise ConfigError("output_dir must be set")
    _validate_watching(cfg)


def _validate_watching(cfg: DictConfig):
    """trainer.validation.* (samples along the way) and trainer.log_with (TensorBoard / W&B)."""
    v = cfg.trainer.validation
    for key in ("every", "num_images"):
        n = v[key]
        if not isinstance(n, int) or isinstance(n, bool) or n < (0 if key == "every" else 1):
            raise ConfigError(f"trainer.validation.{key}={n} must be a whole number >= {0 if key == 'every' else 1}")
    if isinstance(v.prompts, str):                        # one prompt given as text
        v.prompts = [v.prompts]
    if v.prompts is not None and (not isinstance(v.prompts, ListConfig) or not v.prompts
                                  or not all(isinstance(p, str) and p.strip() for p in v.prompts)):
        raise ConfigError(f"trainer.validation.prompts={v.prompts} must be a list of prompts, e.g. "
                          "'[a photo of sks ball, a photo of a ball]', or null for the instance, a recontextualised "
                          "and the regularization prompt")
    if isinstance(cfg.trainer.log_with, str) and cfg.trainer.log_with.lower() in ("none", "null", ""):
        cfg.trainer.log_with = None
    if cfg.trainer.log_with not in (None, "tensorboard", "wandb"):
        raise ConfigError(f"trainer.log_with={cfg.trainer.log_with} is not one of tensorboard, wandb, null")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def cached_dirs(cfg: DictConfig) -> tuple[Path, Path]:
    """Where the instance and regularization latents are cached (NeMo's cached_instance_dir / cached_reg_dir)."""
    d = cfg.model.data
    out = Path(cfg.output_dir)
    return (Path(d.cached_instance_dir) if d.cached_instance_dir else out / "latents" / "instance",
            Path(d.cached_reg_dir) if d.cached_reg_dir else out / "latents" / "regularization")


__all__ = ["load_config", "validate", "parse_overrides", "cached_dirs", "ROOT", "DEFAULT_CONFIG", "ListConfig"]
