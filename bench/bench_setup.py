"""bench/bench.py's shared set-up: the default config on --model under --work, class images from the world
renderer, a fixed batch for the bare loops, one shared read-only pipeline, and the rows of the final summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SUMMARY = []                                   # (measure, value, goal, verdict) rows for the final table


def note(measure, value, goal="", ok=None):
    SUMMARY.append((measure, value, goal, "" if ok is None else ("yes" if ok else "NO")))


def render_class_images(folder: Path, n: int, obj: str, seed: int = 0):
    """n ordinary images of the class object from the world renderer (cheap stand-ins for generated class images)."""
    from dbtutor.toyworld.world import render, sample_attrs
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"class_{i:05d}.png"
        if not path.exists():
            render(sample_attrs(rng, object=obj, look="ordinary"), seed=i).save(path)


def make_config(args, **overrides):
    """The default config (configs/dreambooth.yaml) on --model, writing only under --work."""
    from dbtutor import load_config
    w = Path(args.work)
    base = {"model.pretrained": str(args.model), "output_dir": str(w / "run"),
            "model.data.regularization_dir": str(w / "class_images"), "model.data.num_reg_images": args.n_class,
            "model.data.cached_instance_dir": str(w / "cache" / "instance"),
            "model.data.cached_reg_dir": str(w / "cache" / "class"),
            "trainer.checkpoint_every": 0, "trainer.resume": False, "trainer.progress": False}
    base.update(overrides)
    return load_config(overrides=base)


def fixed_batch(cfg, pipe):
    """The same latents / noise / timesteps / prompt ids for the bare loops: instance + class, from the cache."""
    from dbtutor.core.config import cached_dirs
    from dbtutor.data import scan_images
    from dbtutor.latent_cache import cache_latents
    d, vae = cfg.model.data, pipe.vae
    inst, reg = cached_dirs(cfg)
    B = cfg.trainer.batch_size
    zs = []
    for folder, cache in ((d.instance_dir, inst), (d.regularization_dir, reg)):
        c = cache_latents(scan_images(folder), cache, vae, d.resolution, d.center_crop)
        zs.append(c["mean"][:B] * vae.config.scaling_factor)
    g = torch.Generator().manual_seed(0)
    z = torch.cat(zs)
    noise = torch.randn(z.shape, generator=g)
    t = torch.randint(0, 1000, (len(z),), generator=g)
    tok = pipe.tokenizer
    ids = tok([d.instance_prompt, d.regularization_prompt], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    idx = torch.tensor([0] * B + [1] * B)
    return z, noise, t, ids, idx


_PIPE = {}


def shared_pipe(args):
    """One shared read-only pipeline (for encoding the fixed batch)."""
    if "p" not in _PIPE:
        from dbtutor.models.pipeline import load_pipeline
        _PIPE["p"] = load_pipeline(args.model)
    return _PIPE["p"]
