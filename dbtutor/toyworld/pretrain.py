"""Train the embedded base model from scratch on the toy world: VAE, then text encoder + UNet. Resumable.

    python -m dbtutor.toyworld.pretrain --out data/models --work work/pretrain

Each stage checkpoints atomically every few hundred steps into --work and skips itself when done, so an
interrupted run continues where it stopped. Every random draw is derived from (seed, stage, step).
The judge that scores the result has its own command, `python -m dbtutor.toyworld.train_judge`.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import ROOT
from ..errors import ConfigError
from ..fileio import atomic_path, load_torch, save_torch, write_json
from ..pipeline import sd_layout
from . import judge as J
from .models import make_noise_scheduler, make_pipeline_scheduler, make_text_encoder, make_unet, make_vae
from .tokenizer import prepare_tokenizer
from .names import named_caption, names_by_look, names_without_meaning, world_names
from .world import LOOKS, Attrs, caption, render, sample_attrs

SHIPPED_CARD = ROOT / "data" / "models" / "toyworld" / "README.md"
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


# ----------------------------------------------------------------------------- stages

def stage_vae(work, seed, steps, steps_full):
    vae = make_vae()
    x, _ = load_set(work / "world")

    def step_fn(g, step):
        step_full = bool(torch.rand(1, generator=g) < steps_full / steps)
        idx = torch.randint(len(x), (32,), generator=g)
        xb = J.to_tensor(x[idx.numpy()])
        if not step_full:        # most steps on random 32x32 crops: 4x cheaper, the VAE is convolutional
            i, j = torch.randint(0, 33, (2,), generator=g).tolist()
            xb = xb[:, :, i:i + 32, j:j + 32]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse, l1 = F.mse_loss(rec, xb), F.l1_loss(rec, xb)
        kl = post.kl().mean() / z[0].numel()
        return {"loss": mse + l1 + 1e-4 * kl, "mse": mse.detach(), "kl": kl.detach()}

    train_loop("vae", work, steps, seed, list(vae.parameters()), {"vae": vae}, step_fn, lr=1e-3)
    return vae


@torch.no_grad()
def stage_latents(work, vae):
    path = work / "latents.safetensors"
    if path.exists():
        return load_file(str(path))
    x, _ = load_set(work / "world")
    vae.eval()
    means, logvars = [], []
    for i in tqdm(range(0, len(x), 256), desc="encode latents"):
        post = vae.encode(J.to_tensor(x[i:i + 256])).latent_dist
        means.append(post.mean)
        logvars.append(post.logvar)
    lat = {"mean": torch.cat(means).contiguous(), "logvar": torch.cat(logvars).contiguous()}
    sample = lat["mean"][:4096] + (0.5 * lat["logvar"][:4096]).exp() * torch.randn_like(lat["mean"][:4096])
    lat["scaling_factor"] = torch.tensor(1.0 / float(sample.std()))
    with atomic_path(path) as tmp:
        save_file(lat, str(tmp))
    return lat


def min_snr_weight(noise_sched, t, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    Down-weights the easy low-noise steps so that the high-noise steps, where the caption decides the layout
    (which scene, which object), get more of the gradient. gamma=0 turns it off (all weights 1)."""
    if not gamma:
        return torch.ones(len(t))
    snr = noise_sched.alphas_cumprod[t] / (1 - noise_sched.alphas_cumprod[t])
    return snr.clamp(max=gamma) / snr


def stage_unet(work, seed, steps, lat, tokenizer, snr_gamma=0.0, noise_offset=0.0, snr_gamma_steps=None, lr=6e-4,
               stage="unet", start=None, p_name=0.0, warmup=200, names_meaning="fixed"):
    """Text encoder + UNet on the world's latents. stage="names" continues `start` (te, unet) with captions that
    call objects by their names with probability p_name (see names.py); names_meaning="random": by any name."""
    _, attrs = load_set(work / "world")
    te, unet = start if start is not None else (make_text_encoder(), make_unet())
    modules = {"text_encoder": te, "unet": unet}
    by_look = names_by_look(world_names(tokenizer)) if p_name else None
    if by_look and names_meaning == "random":
        by_look = names_without_meaning(by_look)
    noise_sched = make_noise_scheduler()
    scale = float(lat["scaling_factor"])
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids

    def step_fn(g, step):
        idx = torch.randint(len(attrs), (32,), generator=g)
        rng = np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=g)))
        caps = [named_caption(attrs[i], rng, by_look, p_name) if p_name else caption(attrs[i], rng)
                for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        drop = torch.rand(32, generator=g) < 0.1                      # classifier-free guidance dropout
        ids[drop] = empty
        mean, logvar = lat["mean"][idx], lat["logvar"][idx]
        z = (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)) * scale
        noise = torch.randn(z.shape, generator=g)
        # offset noise: a random shift of each latent channel's mean. The scaled-linear schedule never fully
        # hides the image's mean colour (SNR(T) = 0.005), so without it the model reads the background from
        # that leak instead of from the caption, and at sampling time the seed, not "on the snow", picks it.
        if noise_offset:                                      # (no random draw at all when it is off)
            noise = noise + noise_offset * torch.randn(z.shape[:2] + (1, 1), generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (32,), generator=g)
        pred = unet(noise_sched.add_noise(z, noise, t), t, te(ids)[0]).sample
        # Min-SNR for the first snr_gamma_steps steps (the layout: which scene, which object), then plain MSE,
        # which gives the low-noise steps (the shapes' edges) their full weight back
        gamma = snr_gamma if snr_gamma_steps is None or step < snr_gamma_steps else 0.0
        if not gamma:
            return {"loss": F.mse_loss(pred, noise)}
        mse = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (mse * min_snr_weight(noise_sched, t, gamma)).mean()
        return {"loss": loss, "mse": mse.mean().detach()}

    ema = train_loop(stage, work, steps, seed, [p for m in modules.values() for p in m.parameters()], modules,
                     step_fn, lr=lr, ema=ema_init(modules), warmup=warmup)
    load_ema(modules, ema)
    return te, unet


def model_card(out: Path) -> Path:
    """The model card export writes: the one already in out/toyworld (a retrain keeps it), else the project's card
    of the shipped model (data/models/toyworld/README.md). Checked before training: no card, no 3-hour run."""
    for card in (Path(out) / "toyworld" / "README.md", SHIPPED_CARD):
        if card.exists():
            return card
    raise ConfigError(f"no model card to export with the weights: neither {Path(out) / 'toyworld' / 'README.md'} "
                      f"nor {SHIPPED_CARD} exists; restore {SHIPPED_CARD} from git")


def export(out, vae, te, unet, tokenizer, scale):
    from diffusers import StableDiffusionPipeline
    card = model_card(out).read_text(encoding="utf-8")
    vae.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_pipeline_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out / ".toyworld.tmp"
    pipe.save_pretrained(tmp, safe_serialization=True)
    sd_layout(tmp)                     # text encoder keys under text_model.: read by transformers 4 and 5
    for name in ("vocab.json", "merges.txt", "LICENSE-open_clip.txt"):   # CLIP's own files, whichever transformers
        shutil.copy(Path(tokenizer.name_or_path) / name, tmp / "tokenizer" / name)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    final = out / "toyworld"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"saved the pipeline to {final} with its model card (README.md), whose evaluation describes the weights "
          "docs/results/quality.json was measured on: measure these with `python -m dbtutor.toyworld.quality`, then "
          "`python tools/results_tables.py --update quality work/quality/quality.json`")


def _ends(text: str) -> tuple[int, ...]:
    ends = tuple(int(x) for x in text.split(","))
    if list(ends) != sorted(set(ends)) or ends[0] <= 0:
        raise argparse.ArgumentTypeError(f"--unet-steps {text}: give positive, increasing step counts, e.g. 3000,9000")
    return ends


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/models"))
    ap.add_argument("--work", type=Path, default=Path("work/pretrain"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=40_000)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-full-steps", type=int, default=300, help="of --vae-steps, how many at 64 px (rest: 32 px crops)")
    # the defaults are the shipped weights' recipe: 5,000 steps, one cosine from a peak lr of 6e-4, plain MSE with
    # offset noise 0.1 (Min-SNR and warm-restart extensions stay available; the model card says why)
    ap.add_argument("--unet-steps", type=_ends, default=(5000,),
                    help="steps, or increasing ends with warm restarts, e.g. 3000,9000 (default 5000)")
    ap.add_argument("--snr-gamma", type=float, default=0.0,
                    help="Min-SNR-gamma loss weighting, e.g. 5 (default 0: plain MSE)")
    ap.add_argument("--snr-gamma-steps", type=int, default=None,
                    help="use --snr-gamma only for the first N UNet steps, plain MSE after (default: all steps)")
    ap.add_argument("--noise-offset", type=float, default=0.1,
                    help="offset noise on the UNet's targets (default 0.1; 0: off)")
    ap.add_argument("--unet-lr", type=float, default=6e-4, help="peak learning rate of text encoder + UNet (default 6e-4)")
    ap.add_argument("--names-steps", type=int, default=1000,
                    help="the names stage: continue text encoder + UNet this many steps with named captions (0: skip)")
    ap.add_argument("--names-lr", type=float, default=2e-4, help="peak learning rate of the names stage (default 2e-4)")
    ap.add_argument("--p-name", type=float, default=0.5, help="share of the names stage's captions that use a name")
    ap.add_argument("--names-meaning", choices=("fixed", "random"), default="fixed",
                    help="fixed: a name stands for one look (the shipped weights); random: the control, any name "
                         "for any object (rare words seen as often, meaning nothing)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model_card(args.out)                  # fails now, not after hours of training
    except ConfigError as e:
        raise SystemExit(f"pretrain: error: {e}") from None
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(args.seed)
    render_set(args.work / "world", args.n_images, seed=args.seed + 1)
    torch.manual_seed(args.seed)
    vae = stage_vae(args.work, args.seed, args.vae_steps, args.vae_full_steps)
    lat = stage_latents(args.work, vae)
    tokenizer = prepare_tokenizer(args.work / "tokenizer")
    torch.manual_seed(args.seed)
    te, unet = stage_unet(args.work, args.seed, args.unet_steps, lat, tokenizer, args.snr_gamma,
                           args.noise_offset, args.snr_gamma_steps, args.unet_lr)
    if args.names_steps:        # continues what the unet stage ended with: a changed unet stage starts it afresh
        start = {"unet_steps": list(args.unet_steps), "snr_gamma": args.snr_gamma, "unet_lr": args.unet_lr,
                 "snr_gamma_steps": args.snr_gamma_steps, "noise_offset": args.noise_offset}
        if args.names_meaning != "fixed":        # (the key only when set: the shipped run's marker stays valid)
            start["names_meaning"] = args.names_meaning
        marker = args.work / "names.start.json"
        if (args.work / "names.ckpt").exists() and (not marker.exists() or json.loads(marker.read_text()) != start):
            print("[names] the unet stage changed: the names stage starts again")   # (or --names-meaning did)
            (args.work / "names.ckpt").unlink()
        write_json(marker, start)
        torch.manual_seed(args.seed)
        te, unet = stage_unet(args.work, args.seed, args.names_steps, lat, tokenizer, 0.0, args.noise_offset,
                              None, args.names_lr, stage="names", start=(te, unet), p_name=args.p_name, warmup=100,
                              names_meaning=args.names_meaning)
    export(args.out, vae, te, unet, tokenizer, float(lat["scaling_factor"]))
    print(f"pretraining done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
