"""The VAE latent cache: encode each image once, keyed by its content, the crop settings and the VAE itself.

NeMo re-encodes when the number of cached files differs from the number of images. Here every cache entry is
named by a key = hash(image bytes, resolution, crop, VAE identity), listed in `manifest.json`; so a replaced,
edited, added or removed image, a new resolution or crop, or another VAE is noticed and only what changed is
(re-)encoded. Entries hold the latent distribution (mean, logvar) in safetensors: training samples from it each
step, as NeMo does, and nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import load_image, preprocess
from .fileio import atomic_path, sha256_file, write_json

MANIFEST = "manifest.json"
VERSION = 1


def vae_identity(vae) -> str:
    """A fingerprint of the VAE: its config and a hash of its encoder weights."""
    h = hashlib.sha256(json.dumps({k: str(v) for k, v in dict(vae.config).items()}, sort_keys=True).encode())
    for name, t in sorted(vae.encoder.state_dict().items()) + sorted(vae.quant_conv.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def entry_key(image_sha: str, resolution: int, center_crop: bool, vae_id: str) -> str:
    return hashlib.sha256(f"{image_sha}|{resolution}|{center_crop}|{vae_id}|v{VERSION}".encode()).hexdigest()[:24]


def _load_entry(path: Path, latent_shape=None):
    """(mean, logvar) from a cache file, or None if it is missing, corrupt or not finite."""
    if not path.exists():
        return None
    try:
        t = load_file(str(path))
        mean, logvar = t["mean"], t["logvar"]
    except (SafetensorError, KeyError, OSError, RuntimeError, ValueError):
        warnings.warn(f"latent cache file {path} is corrupt: re-encoding it")
        return None
    if mean.shape != logvar.shape or not (torch.isfinite(mean).all() and torch.isfinite(logvar).all()) \
            or (latent_shape is not None and tuple(mean.shape) != tuple(latent_shape)):
        warnings.warn(f"latent cache file {path} does not hold a valid latent: re-encoding it")
        return None
    return mean, logvar


@torch.no_grad()
def cache_latents(image_paths: list[Path], cache_dir: str | Path, vae, resolution: int, center_crop: bool = True,
                  batch_size: int = 8) -> dict:
    """Return {'mean': NxCxhxw, 'logvar': NxCxhxw, 'encoded': [paths encoded now], 'reused': [...]}.

    Reuses valid entries whose key matches; encodes the rest with `vae` and writes each entry atomically;
    removes entries of images that are gone; writes the manifest last."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    vae_id = vae_identity(vae)
    keys = [entry_key(sha256_file(p), resolution, center_crop, vae_id) for p in image_paths]
    found = {k: _load_entry(cache_dir / f"{k}.safetensors") for k in set(keys)}
    todo = [i for i, k in enumerate(keys) if found[k] is None]
    device, dtype = vae.device, vae.dtype
    for s in range(0, len(todo), batch_size):
        chunk = todo[s:s + batch_size]
        x = torch.stack([preprocess(load_image(image_paths[i]), resolution, center_crop) for i in chunk])
        post = vae.encode(x.to(device, dtype)).latent_dist
        for j, i in enumerate(chunk):
            entry = {"mean": post.mean[j].float().cpu().contiguous(), "logvar": post.logvar[j].float().cpu().contiguous()}
            with atomic_path(cache_dir / f"{keys[i]}.safetensors") as tmp:
                save_file(entry, str(tmp))
            found[keys[i]] = (entry["mean"], entry["logvar"])
    manifest = {"version": VERSION, "vae": vae_id, "resolution": resolution, "center_crop": center_crop,
                "entries": {str(p): k for p, k in zip(image_paths, keys)}}
    for stale in set(p.stem for p in cache_dir.glob("*.safetensors")) - set(keys):
        (cache_dir / f"{stale}.safetensors").unlink()
    write_json(cache_dir / MANIFEST, manifest)
    return {"mean": torch.stack([found[k][0] for k in keys]), "logvar": torch.stack([found[k][1] for k in keys]),
            "encoded": [image_paths[i] for i in todo], "reused": [p for i, p in enumerate(image_paths) if i not in set(todo)]}


def sample_latents(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from the cached diagonal Gaussian (unscaled; multiply by vae.config.scaling_factor)."""
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * noise
