"""What the toy world's models train with (pretrain and train_judge): rendered image sets, random draws seeded by
(seed, stage, step), and a resumable AdamW loop with warm restarts, checkpoints and an EMA."""
from __future__ import annotations

import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.fileio import atomic_path, load_torch, save_torch, write_json
from .world import LOOKS, Attrs, render, sample_attrs

STAGES = ("render", "judge", "vae", "latents", "unet", "export", "names")   # an index seeds each stage's draws: keep the order


# ----------------------------------------------------------------------------- data

def _render_chunk(args):
    seed, n, p_look = args
    rng = np.random.default_rng(seed)
    imgs, attrs = [], []
    for _ in range(n):
        look = "ordinary"
        if p_look and rng.random() < p_look:
            look = LOOKS[1 + rng.integers(len(LOOKS) - 1)]
        a = sample_attrs(rng, look=look) if look != "ordinary" else sample_attrs(rng)
        imgs.append(np.asarray(render(a, seed=int(rng.integers(2 ** 31)))))
        attrs.append(a.to_dict())
    return np.stack(imgs), attrs


def render_set(path: Path, n: int, seed: int, p_look: float = 0.0, workers: int = 2):
    """Render n images (uint8) + attributes to path.npy / path.json, in seeded chunks of 1000."""
    if path.with_suffix(".json").exists():
        return
    chunks = [(seed * 100_003 + i, min(1000, n - i * 1000), p_look) for i in range(math.ceil(n / 1000))]
    with Pool(workers) as pool:
        parts = list(tqdm(pool.imap(_render_chunk, chunks), total=len(chunks), desc=f"render {path.name}"))
    with atomic_path(path.with_suffix(".npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.concatenate([p[0] for p in parts]))
    write_json(path.with_suffix(".json"), [a for p in parts for a in p[1]])


def load_set(path: Path):
    attrs = [Attrs(**{**a, "hue": tuple(a["hue"])}) for a in json.loads(path.with_suffix(".json").read_text())]
    return np.load(path.with_suffix(".npy")), attrs


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 100_000_007 + step)


# ----------------------------------------------------------------------------- a resumable loop

def lr_factor(s: int, ends: tuple[int, ...], warmup: int) -> float:
    """Warmup, then cosine decay to 0.1 towards the next end (several ends = warm restarts).

    Step s == an end still belongs to the finished cycle: a resumed run takes that step's rate from the
    optimizer state the earlier run saved."""
    end = next((e for e in ends if s <= e), ends[-1])
    return min(1, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / end, 1))))


def train_loop(stage, work, steps, seed, params, modules, step_fn, lr, ckpt_every=250, ema=None, warmup=200):
    """Generic AdamW loop with warmup + cosine decay, checkpoint/resume, and an optional EMA of `modules`.

    steps is an int or an increasing tuple of ends, e.g. (3000, 9000): the cosine runs to 3000, then restarts
    on the 9000-step curve. That is exactly what re-running a finished 3000-step stage with 9000 steps does,
    so a stage can be extended later and the single command still reproduces the result.
    """
    ends = tuple(steps) if isinstance(steps, (tuple, list)) else (steps,)
    steps = ends[-1]
    ckpt = work / f"{stage}.ckpt"
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, ends, warmup))
    start = 0
    if ckpt.exists():
        state = load_torch(ckpt)
        for name, m in modules.items():
            m.load_state_dict(state["model"][name])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if ema is not None:
            ema.update({k: v for k, v in state["ema"].items()})
        start = state["step"]
        print(f"[{stage}] resuming from step {start}")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, mininterval=10)
    t0 = time.time()
    for step in bar:
        for m in modules.values():
            m.train()
        logs = step_fn(step_generator(seed, stage, step), step)
        opt.zero_grad(set_to_none=True)
        logs["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for name, m in modules.items():
                    for k, v in m.state_dict().items():
                        key = f"{name}.{k}"
                        if v.dtype.is_floating_point:
                            ema[key].mul_(decay).add_(v, alpha=1 - decay)
                        else:
                            ema[key].copy_(v)
        bar.set_postfix({k: f"{float(v.detach()):.4f}" for k, v in logs.items()}, refresh=False)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save_torch({"model": {n: m.state_dict() for n, m in modules.items()}, "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step + 1, "ema": dict(ema) if ema is not None else {}},
                       ckpt)
            with open(work / "log.txt", "a") as f:
                f.write(f"{stage} step {step + 1}/{steps} {time.time() - t0:.0f}s "
                        + " ".join(f"{k}={float(v.detach()):.4f}" for k, v in logs.items()) + "\n")
    return ema


def ema_init(modules):
    return {f"{n}.{k}": v.detach().clone() for n, m in modules.items() for k, v in m.state_dict().items()}


def load_ema(modules, ema):
    """Put the EMA weights (keys "name.param", as ema_init makes them) into the named modules."""
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in ema.items() if k.startswith(name + ".")})
