"""The VAE latent cache: encode each image once, keyed by its content, the crop settings and the VAE itself.

NeMo re-encodes when the number of cached files differs from the number of images. Here every cache entry is
named by a key = hash(image bytes, resolution, crop, VAE identity), listed in `manifest.json`; so a replaced,
edited, added or removed image, a new resolution or crop, or another VAE is noticed and only what changed is
(re-)encoded. Entries hold the latent distribution (mean, logvar) in safetensors: training samples from it each
step, as NeMo does, and nothing is unpickled. Each entry also records its key and a digest of its numbers, so a
damaged file (truncated, edited, swapped with another entry) is rebuilt instead of trusted.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .core.fileio import atomic_path, remove_stale_temps, sha256_file, write_json
from .core.hooks import fault_point
from .data import load_image, preprocess

MANIFEST = "manifest.json"
VERSION = 2                 # 2: entries carry their key and digest; the crop is taken before resizing


def vae_identity(vae) -> str:
    """A fingerprint of the VAE: its config and a hash of its encoder weights rounded to float16, so that the same
    VAE in float32 and in float16 (a notebook's sampling copy on a GPU, training's float32 one) shares its cache,
    while any other VAE (other config, or weights that differ beyond float16's rounding) gets its own entries.
    The weights are rounded on the CPU: the fingerprint does not depend on the device either. The config's private
    keys (`_name_or_path`: the folder it was loaded from, `_diffusers_version`) are left out: a moved model folder or
    a diffusers upgrade keeps the cache."""
    config = {k: str(v) for k, v in dict(vae.config).items() if not k.startswith("_")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(vae.encoder.state_dict().items()) + sorted(vae.quant_conv.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def entry_key(image_sha: str, resolution: int, center_crop: bool, vae_id: str) -> str:
    return hashlib.sha256(f"{image_sha}|{resolution}|{center_crop}|{vae_id}|v{VERSION}".encode()).hexdigest()[:24]


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    """(channels, h, w) of the latent of a resolution x resolution image."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, resolution // f, resolution // f)


def _digest(mean: torch.Tensor, logvar: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (mean, logvar):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_entry(path: Path, key: str, mean: torch.Tensor, logvar: torch.Tensor):
    with atomic_path(path) as tmp:
        save_file({"mean": mean, "logvar": logvar}, str(tmp), metadata={"key": key, "digest": _digest(mean, logvar)})


def _load_entry(path: Path, key: str, shape=None):
    """(mean, logvar) from a cache file, or None if it is missing, damaged, for another key or not finite."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            mean, logvar = f.get_tensor("mean").float(), f.get_tensor("logvar").float()
    except Exception as e:          # safetensors raises several types for a damaged header or body
        warnings.warn(f"latent cache file {path} is damaged ({type(e).__name__}): encoding its image again",
                      stacklevel=3)
        return None
    ok = (meta.get("key") == key and mean.shape == logvar.shape
          and (shape is None or tuple(mean.shape) == tuple(shape))
          and bool(torch.isfinite(mean).all() and torch.isfinite(logvar).all())
          and meta.get("digest") == _digest(mean, logvar))
    if not ok:
        warnings.warn(f"latent cache file {path} does not hold the latent it should: encoding its image again",
                      stacklevel=3)
        return None
    return mean, logvar


@torch.no_grad()
def cache_latents(image_paths: list[Path], cache_dir: str | Path, vae, resolution: int, center_crop: bool = True,
                  batch_size: int = 8, lock: bool = True, wait_for_lock=False) -> dict:
    """Return {'mean': NxCxhxw, 'logvar': NxCxhxw, 'encoded': [paths encoded now], 'reused': [...]}.

    Reuses valid entries whose key matches; encodes the rest with `vae` and writes each entry atomically;
    removes entries of images that are gone; writes the manifest last. Holds the folder's lock meanwhile (another
    run on it: LockedError, or wait as trainer.wait_for_lock does); lock=False when the caller holds it."""
    from .core.locks import hold
    if lock:
        with hold(cache_dir, "the latent cache", wait_for_lock):
            return cache_latents(image_paths, cache_dir, vae, resolution, center_crop, batch_size, lock=False)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    vae_id = vae_identity(vae)
    shape = latent_shape(vae, resolution)
    keys = [entry_key(sha256_file(p), resolution, center_crop, vae_id) for p in image_paths]
    found = {k: _load_entry(cache_dir / f"{k}.safetensors", k, shape) for k in set(keys)}
    todo = [i for i, k in enumerate(keys) if found[k] is None]
    device, dtype = vae.device, vae.dtype
    for s in range(0, len(todo), batch_size):
        chunk = todo[s:s + batch_size]
        x = torch.stack([preprocess(load_image(image_paths[i]), resolution, center_crop) for i in chunk])
        post = vae.encode(x.to(device, dtype)).latent_dist
        for j, i in enumerate(chunk):
            mean, logvar = post.mean[j].float().cpu().contiguous(), post.logvar[j].float().cpu().contiguous()
            _save_entry(cache_dir / f"{keys[i]}.safetensors", keys[i], mean, logvar)
            found[keys[i]] = (mean, logvar)
            fault_point("cache")
    manifest = {"version": VERSION, "vae": vae_id, "resolution": resolution, "center_crop": center_crop,
                "entries": {str(p): k for p, k in zip(image_paths, keys)}}
    for stale in set(p.stem for p in cache_dir.glob("*.safetensors") if not p.name.startswith(".")) - set(keys):
        (cache_dir / f"{stale}.safetensors").unlink(missing_ok=True)
    write_json(cache_dir / MANIFEST, manifest)
    done = set(todo)
    return {"mean": torch.stack([found[k][0] for k in keys]), "logvar": torch.stack([found[k][1] for k in keys]),
            "encoded": [image_paths[i] for i in todo], "reused": [p for i, p in enumerate(image_paths) if i not in done]}


def sample_latents(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from the cached diagonal Gaussian (unscaled; multiply by vae.config.scaling_factor)."""
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * noise


class LatentSource:
    """Latents for a list of image indices: sampled from the cache, or encoded online from pixels."""

    def __init__(self, cfg, paths, cache_dir, vae, accelerator):
        self.vae, self.cfg = vae, cfg
        d = cfg.model.data
        self.n = len(paths)
        self.cached = cfg.model.use_cached_latents
        self.encoded = 0                             # images this process encoded into the cache
        if self.cached:                              # the main process holds the folder's lock for all
            from .core.locks import hold
            with hold(cache_dir, "the latent cache", cfg.trainer.wait_for_lock, accelerator):
                if accelerator.is_main_process:      # one writer; the others wait, then read a complete cache
                    c = cache_latents(paths, cache_dir, vae, d.resolution, d.center_crop, lock=False)
                accelerator.wait_for_everyone()
                if not accelerator.is_main_process:  # every entry is valid now: this only reads
                    c = cache_latents(paths, cache_dir, vae, d.resolution, d.center_crop, lock=False)
                accelerator.wait_for_everyone()
            self.encoded = len(c["encoded"])
            self.mean, self.logvar = c["mean"].to(vae.device), c["logvar"].to(vae.device)
        else:
            from .data import DreamBoothDataset
            self.dataset = DreamBoothDataset(paths[0].parent, "", d.resolution, d.center_crop, seed=cfg.trainer.seed)
            self.dataset.instance_paths = paths

    def __call__(self, idx: torch.Tensor, vae_noise: torch.Tensor, crop_seed=None) -> torch.Tensor:
        """Scaled latents mean + std * vae_noise for images idx (modulo the image count): one sample of each
        image's latent distribution, its standard normal noise given (the training step draws it).

        Uncached random crops are drawn from `crop_seed`, so a resumed run crops as an unbroken one does."""
        idx = idx % self.n
        if self.cached:
            mean, logvar = self.mean[idx], self.logvar[idx]
        else:
            if crop_seed is not None:
                import numpy as np
                self.dataset.rng = np.random.default_rng(crop_seed)
            from .data import collate
            px = collate([self.dataset[i] for i in idx.tolist()])["pixel_values"]
            with torch.no_grad():
                post = self.vae.encode(px.to(self.vae.device, self.vae.dtype)).latent_dist
            mean, logvar = post.mean.float(), post.logvar.float()   # a VAE in half precision (GPU) encodes in it
        return (mean + torch.exp(0.5 * logvar) * vae_noise.to(mean.device, mean.dtype)) * self.vae.config.scaling_factor
