"""dbtutor's speed, measured side by side in one run: training step vs a reference loop and the compute limit,
batched class-image generation vs one image at a time, memory with gradient checkpointing, CPU switches.

    python bench/bench.py [--quick] [--model PATH] [--judge PATH] [--threads N]

Every comparison alternates its contenders step by step (or batch by batch) and takes medians, so that the noise
of a busy machine hits both sides alike; the ratios are what count, absolute times depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rss import peak_rss_mb                    # bench/rss.py: VmHWM, right in a subprocess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # measure the dbtutor of this tree, whatever `pip install -e` points at
SUMMARY = []                                   # (measure, value, goal, verdict) rows for the final table


def say(*a):
    print(*a, flush=True)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def note(measure, value, goal="", ok=None):
    SUMMARY.append((measure, value, goal, "" if ok is None else ("yes" if ok else "NO")))


# ----------------------------------------------------------------------------- shared set-up

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
    from dbtutor.config import cached_dirs
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


# ----------------------------------------------------------------------------- the contenders of a training step

class Bare:
    """The compute limit: UNet (and, if trained, text encoder) forward + backward + dbtutor's optimizer step on
    fixed latents, noise, timesteps and embeddings. Nothing else."""

    def __init__(self, cfg, batch, channels_last=False, bf16=False, compile=False, train_te=None, clip=False):
        from dbtutor.pipeline import load_pipeline
        from dbtutor.train import make_optimizer
        pipe = load_pipeline(cfg.model.pretrained)
        self.unet, self.te = pipe.unet, pipe.text_encoder
        self.train_te = cfg.model.train_text_encoder if train_te is None else train_te
        z, noise, t, ids, self.idx = batch
        sched = pipe.scheduler
        from diffusers import DDPMScheduler
        self.noisy = DDPMScheduler.from_config(sched.config).add_noise(z, noise, t)
        self.noise, self.t, self.ids = noise, t, ids
        self.unet.train()
        self.te.requires_grad_(self.train_te)
        with torch.no_grad():
            self.emb = self.te(ids)[0]
        params = [p for p in self.unet.parameters()] + (list(self.te.parameters()) if self.train_te else [])
        self.params, self.clip = params, cfg.optim.max_grad_norm if clip else 0
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.model = torch.compile(self.unet) if compile else self.unet
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.opt = make_optimizer(cfg, params, "cpu")

    def step(self):
        with self.autocast():
            enc = (self.te(self.ids)[0] if self.train_te else self.emb)[self.idx]
            pred = self.model(self.noisy, self.t, enc).sample
        loss = F.mse_loss(pred.float(), self.noise)
        loss.backward()
        if self.clip:                          # only in the 'bare + clipping' contender
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Reference:
    """A straightforward DreamBooth step as diffusers' examples/dreambooth/train_dreambooth.py does it (prior
    preservation, no pre-computed embeddings): a DataLoader reads and preprocesses the images from disk, the prompts
    are tokenized, the VAE encodes the pixels and the text encoder embeds the prompts every step; UNet forward and
    backward; grad clipping; torch.optim.AdamW with its defaults; zero_grad(set_to_none=False) as the script passes."""

    def __init__(self, cfg):
        from dbtutor.data import DreamBoothDataset, collate
        from dbtutor.pipeline import load_pipeline
        from diffusers import DDPMScheduler
        d = cfg.model.data
        pipe = load_pipeline(cfg.model.pretrained)
        self.unet, self.te, self.vae, self.tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.train_te = cfg.model.train_text_encoder
        self.vae.requires_grad_(False)
        self.te.requires_grad_(self.train_te)
        self.unet.train()
        if self.train_te:
            self.te.train()
        ds = DreamBoothDataset(d.instance_dir, d.instance_prompt, d.resolution, d.center_crop,
                               d.regularization_dir, d.regularization_prompt)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=cfg.trainer.batch_size, shuffle=True,
                                                  collate_fn=collate, num_workers=0)
        self.it = iter(self.loader)
        self.params = list(self.unet.parameters()) + (list(self.te.parameters()) if self.train_te else [])
        self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.max_norm = cfg.optim.max_grad_norm

    def step(self):
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        ids = self.tok(batch["prompts"], truncation=True, padding="max_length", max_length=self.tok.model_max_length,
                       return_tensors="pt").input_ids
        pixel_values = batch["pixel_values"].to(dtype=self.vae.dtype)
        model_input = self.vae.encode(pixel_values).latent_dist.sample() * self.vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (model_input.shape[0],)).long()
        noisy = self.sched.add_noise(model_input, noise, t)
        enc = self.te(ids)[0]
        pred = self.unet(noisy, t, enc, return_dict=False)[0]
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        loss = F.mse_loss(pred.float(), target.float()) + F.mse_loss(pred_prior.float(), target_prior.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad(set_to_none=False)


class Interleaved:
    """train()'s per-step callback: times dbtutor's own steps (callback exit -> next callback entry) and, inside
    the callback, one step of each other contender, alternating their order."""

    def __init__(self, others: dict, warmup: int):
        self.others, self.warmup, self.last = others, warmup, None
        self.times = {"dbtutor": [], **{k: [] for k in others}}

    def __call__(self, rec):
        now = time.perf_counter()
        if self.last is not None and rec["step"] > self.warmup + 1:
            self.times["dbtutor"].append(now - self.last)
        names = list(self.others)
        for name in (names if rec["step"] % 2 else names[::-1]):
            a = time.perf_counter()
            self.others[name].step()
            if rec["step"] > self.warmup:
                self.times[name].append(time.perf_counter() - a)
        self.last = time.perf_counter()


def paired_ratio(num, den):
    """Median of per-round ratios (rounds are adjacent in time, so the machine's load cancels)."""
    n = min(len(num), len(den))
    return med([a / b for a, b in zip(num[:n], den[:n])])


def bench_training(args):
    from dbtutor.train import train
    say("\n== training step: dbtutor vs a reference loop (diffusers-style) vs the compute limit ==")
    say(f"batch: {1} instance + {1} class image(s), {args.steps} measured steps after {args.warmup} warm-up; "
        f"dbtutor = train() on the default config")
    for train_te in (False, True):
        label = "text encoder trained" if train_te else "text encoder frozen"
        cfg = make_config(args, **{"model.train_text_encoder": train_te,
                                   "trainer.max_steps": args.warmup + args.steps + 1})
        batch = fixed_batch(cfg, _pipe(args))
        cb = Interleaved({"reference": Reference(cfg), "bare": Bare(cfg, batch),
                          "bare+clip": Bare(cfg, batch, clip=True)}, args.warmup)
        train(cfg, progress=False, callback=cb)
        t = cb.times
        r_ref, r_bare = paired_ratio(t["reference"], t["dbtutor"]), paired_ratio(t["dbtutor"], t["bare"])
        r_clip = paired_ratio(t["dbtutor"], t["bare+clip"])
        say(f"  [{label}] median ms/step: dbtutor {1e3 * med(t['dbtutor']):.1f} | reference "
            f"{1e3 * med(t['reference']):.1f} | bare limit {1e3 * med(t['bare']):.1f} | bare + grad clipping "
            f"{1e3 * med(t['bare+clip']):.1f}")
        say(f"  [{label}] reference / dbtutor = {r_ref:.2f}x faster   dbtutor / bare limit = {r_bare:.3f}x   "
            f"dbtutor / (bare + clipping) = {r_clip:.3f}x")
        note(f"train step, {label}: speed-up vs reference loop", f"{r_ref:.2f}x", ">= 2x" if not train_te else "",
             r_ref >= 2 if not train_te else None)
        r_max = paired_ratio(t["reference"], t["bare"])  # a loop at the compute limit would gain exactly this much
        say(f"  [{label}] the most any loop could gain over the reference: reference / bare limit = {r_max:.2f}x "
            f"(on this model, VAE + text encoding + data cost {100 * (r_max - 1):.0f}% of a UNet step)")
        note(f"train step, {label}: the ceiling, reference / compute limit", f"{r_max:.2f}x")
        note(f"train step, {label}: dbtutor / compute limit", f"{r_bare:.3f}x", "<= 1.10x", r_bare <= 1.10)
        note(f"train step, {label}: dbtutor / (compute limit + grad clipping)", f"{r_clip:.3f}x")


_PIPE = {}


def _pipe(args):
    """One shared read-only pipeline (for encoding the fixed batch)."""
    if "p" not in _PIPE:
        from dbtutor.pipeline import load_pipeline
        _PIPE["p"] = load_pipeline(args.model)
    return _PIPE["p"]


# ----------------------------------------------------------------------------- regularization images

def bench_regularization(args):
    from dbtutor.fileio import save_image
    from dbtutor.pipeline import load_pipeline
    from dbtutor.regularization import generate_regularization, reg_seed
    from dbtutor.toyworld.subjects import load_subject
    from PIL import Image
    say("\n== class images: dbtutor's batched generation vs one image at a time (PNDM, 50 steps) ==")
    base = make_config(args)
    d, s = base.model.data, base.model.sampling
    obj = load_subject(d.instance_dir)["object"]
    judge = None
    if Path(args.judge).exists():
        from dbtutor.toyworld.judge import load_judge, predict
        judge = load_judge(args.judge)
    else:
        say(f"  (no judge at {args.judge}: class fidelity not measured)")
    if args.samplers:
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.samplers.split(",")]
    else:
        configs = [(s.scheduler, s.num_inference_steps)] if args.quick else \
            [("dpm", 10), ("dpm", 15), ("dpm", 20), ("dpm", 25), ("ddim", 20), ("ddim", 50)]
    if (s.scheduler, s.num_inference_steps) not in configs:
        configs.append((s.scheduler, s.num_inference_steps))
    bs = d.num_images_per_prompt
    rounds = -(-args.n_slow // bs)             # batches per config; the slow images are spread over the rounds
    n_fast, per_round_slow = bs * rounds, -(-args.n_slow // rounds)
    fast_pipe, slow_pipe = load_pipeline(args.model), load_pipeline(args.model)
    slow_sched = type(slow_pipe.scheduler).__name__
    w = Path(args.work) / "reg"
    shutil.rmtree(w, ignore_errors=True)
    secs = {c: 0.0 for c in configs}
    secs["slow"] = 0.0
    slow_images = []
    shape = (slow_pipe.unet.config.in_channels, slow_pipe.unet.config.sample_size, slow_pipe.unet.config.sample_size)
    for r in range(rounds):                    # interleave: one batch of every config, then a slice of slow images
        for c in configs:
            cfg = make_config(args, **{"model.sampling.scheduler": c[0], "model.sampling.num_inference_steps": c[1],
                                       "model.data.regularization_dir": str(w / f"{c[0]}{c[1]}"),
                                       "model.data.num_reg_images": bs * (r + 1)})
            a = time.perf_counter()
            generate_regularization(cfg, fast_pipe, progress=False)
            secs[c] += time.perf_counter() - a
        a = time.perf_counter()
        for i in range(r * per_round_slow, (r + 1) * per_round_slow):
            g = torch.Generator().manual_seed(reg_seed(base.trainer.seed, i))   # the same start noise as dbtutor's
            lat = torch.randn(shape, generator=g)[None]
            im = slow_pipe(d.regularization_prompt, num_inference_steps=50, guidance_scale=s.guidance_scale,
                           latents=lat).images[0]
            save_image(im, w / "slow" / f"class_{i:05d}.png")
            slow_images.append(im)
        secs["slow"] += time.perf_counter() - a
    n_slow = rounds * per_round_slow
    slow_rate = n_slow / secs["slow"]

    def verdicts(images):
        return [o == obj for o in predict(judge, images)["object"]] if judge is not None else [float("nan")] * len(images)

    def fidelity(images):
        return 100 * float(np.mean(verdicts(images)))

    f_slow, v_slow = fidelity(slow_images), verdicts(slow_images)
    say(f"  slow path: {slow_sched}, 50 steps, 1 image per call: {slow_rate:.2f} images/s, "
        f"class fidelity {f_slow:.1f}% (n={n_slow})")
    say(f"  {'sampler':<8}{'steps':>6}{'images/s':>10}{'speed-up':>10}{'fidelity %':>12}{'same seeds':>12}{'d pts':>7}"
        f"{'agree %':>9}")
    rows = {}
    for c in configs:
        ims = [Image.open(p).convert("RGB") for p in sorted((w / f"{c[0]}{c[1]}").glob("class_*.png"))]
        rate = n_fast / secs[c]
        f_all, f_paired = fidelity(ims), fidelity(ims[:n_slow])
        agree = 100 * float(np.mean([a == b for a, b in zip(verdicts(ims[:n_slow]), v_slow)]))
        rows[c] = (rate, f_all, f_paired)
        say(f"  {c[0]:<8}{c[1]:>6}{rate:>10.2f}{rate / slow_rate:>9.1f}x{f_all:>12.1f}{f_paired:>12.1f}"
            f"{f_paired - f_slow:>+7.1f}{agree:>9.1f}")
    cur = (s.scheduler, s.num_inference_steps)
    rate, _, f_paired = rows[cur]
    ok = rate / slow_rate >= 3 and (judge is None or abs(f_paired - f_slow) <= 2)
    note(f"class images/s, batched {cur[0]} {cur[1]} steps (batch {bs}) vs {slow_sched} 50 steps one by one",
         f"{rate / slow_rate:.1f}x", ">= 3x", rate / slow_rate >= 3)
    if judge is not None:
        note(f"class fidelity, batched vs one by one (same {n_slow} seeds)", f"{f_paired:.1f}% vs {f_slow:.1f}%",
             "within 2 pts", abs(f_paired - f_slow) <= 2)
    return ok


# ----------------------------------------------------------------------------- memory

def bench_memory(args):
    say("\n== peak resident memory of training, with and without gradient checkpointing (subprocesses) ==")
    batches = [1] if args.quick else [1, 8]
    for B in batches:
        peaks = {}
        for gc in (False, True):
            cmd = [sys.executable, __file__, "--child-memory", "--model", str(args.model), "--work", str(args.work),
                   "--threads", str(args.threads), "--batch", str(B), "--gc", str(int(gc)),
                   "--n-class", str(args.n_class)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"memory child failed:\n{out.stderr[-2000:]}")
            peaks[gc] = json.loads(out.stdout.strip().splitlines()[-1])
        a, b = peaks[False], peaks[True]
        say(f"  batch {B}+{B}: peak RSS {a['peak_mb']:.0f} MB without, {b['peak_mb']:.0f} MB with checkpointing "
            f"(after imports only: {a['setup_mb']:.0f} MB; step {a['step_ms']:.0f} / "
            f"{b['step_ms']:.0f} ms)")
        note(f"peak RSS, batch {B}+{B}: gradient checkpointing off / on", f"{a['peak_mb']:.0f} / {b['peak_mb']:.0f} MB")


def child_memory(args):
    """Run a few steps of train() and print its peak RSS as JSON: one fresh process per setting."""
    from dbtutor.train import train
    B, steps = args.batch, 6
    cfg = make_config(args, **{"trainer.batch_size": B, "model.gradient_checkpointing": bool(args.gc),
                               "trainer.max_steps": steps, "output_dir": str(Path(args.work) / f"mem_{B}_{args.gc}")})
    marks = {}

    def cb(rec):
        now = time.perf_counter()
        if rec["step"] == 1:
            marks["t1"] = now
        marks["t"] = now

    setup = peak_rss_mb()
    res = train(cfg, progress=False, callback=cb)
    peak = peak_rss_mb()
    shutil.rmtree(res.output_dir, ignore_errors=True)
    print(json.dumps({"peak_mb": peak, "setup_mb": setup, "step_ms": 1e3 * (marks["t"] - marks["t1"]) / (steps - 1)}))


# ----------------------------------------------------------------------------- CPU switches

def bench_switches(args):
    say("\n== CPU switches: step time of the bare step (UNet fwd+bwd+AdamW, frozen text encoder) vs the default ==")
    cfg = make_config(args, **{"model.train_text_encoder": False})
    batch = fixed_batch(cfg, _pipe(args))
    variants = {"default (fp32)": {}, "channels_last": {"channels_last": True}, "bf16 autocast": {"bf16": True},
                "channels_last + bf16": {"channels_last": True, "bf16": True}}
    if not args.quick:
        variants["torch.compile"] = {"compile": True}
    bares, compile_s = {}, {}
    for name, kw in variants.items():
        bares[name] = Bare(cfg, batch, **kw)
        a = time.perf_counter()
        bares[name].step()                     # first call: compilation for torch.compile
        compile_s[name] = time.perf_counter() - a
    times = {k: [] for k in variants}
    for r in range(args.steps):
        for name in (list(variants) if r % 2 else list(variants)[::-1]):
            a = time.perf_counter()
            bares[name].step()
            times[name].append(time.perf_counter() - a)
    base = times["default (fp32)"]
    for name in variants:
        ratio = paired_ratio(times[name], base)
        extra = f"  (first step incl. compilation: {compile_s[name]:.0f} s)" if "compile" in name else ""
        say(f"  {name:<22} {1e3 * med(times[name]):7.1f} ms   x{ratio:.2f} of default{extra}")
        if name != "default (fp32)":
            note(f"CPU switch: {name}, step time vs fp32 default", f"x{ratio:.2f}")
    if args.quick:
        say("  torch.compile: skipped in --quick (its compilation alone takes minutes on 2 cores)")
    bench_sampling_switches(args, cfg)


def bench_sampling_switches(args, cfg):
    """The same switches for sampling: one UNet evaluation of a class-image batch (with guidance: 2 x batch)."""
    from diffusers import UNet2DConditionModel
    n = 2 * cfg.model.data.num_images_per_prompt
    say(f"  sampling (UNet forward, batch {n} = {n // 2} images x guidance, no grad):")
    unets = {k: UNet2DConditionModel.from_pretrained(Path(args.model) / "unet").eval()
             for k in ("default (fp32)", "channels_last", "bf16 autocast")}
    unets["channels_last"].to(memory_format=torch.channels_last)
    cross = unets["default (fp32)"].config.cross_attention_dim
    x, t, e = torch.randn(n, 4, 16, 16), torch.tensor(500), torch.randn(n, 32, cross)
    times = {k: [] for k in unets}
    for r in range(max(4, args.steps // 3)):
        for name in (list(unets) if r % 2 else list(unets)[::-1]):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in name else contextlib.nullcontext()
            a = time.perf_counter()
            with torch.no_grad(), ctx:
                unets[name](x, t, e)
            if r:
                times[name].append(time.perf_counter() - a)
    for name in unets:
        ratio = paired_ratio(times[name], times["default (fp32)"])
        say(f"  {name:<22} {1e3 * med(times[name]):7.1f} ms   x{ratio:.2f} of default")
        if name != "default (fp32)":
            note(f"CPU switch for sampling: {name}, UNet forward time vs fp32", f"x{ratio:.2f}")


# ----------------------------------------------------------------------------- LoRA vs full (optional)

def bench_lora(args):
    path = ROOT / "bench" / "lora_vs_full.py"
    if not path.exists():
        say("\n(bench/lora_vs_full.py not present: LoRA vs full fine-tuning skipped)")
        return
    say("\n== LoRA vs full fine-tuning (bench/lora_vs_full.py) ==")
    cmd = [sys.executable, str(path), "--model", str(args.model), "--judge", str(args.judge),
           "--work", str(Path(args.work) / "lora")] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    say(out.stdout.rstrip())
    if out.returncode:
        say(f"  lora_vs_full.py failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")


# ----------------------------------------------------------------------------- main

SECTIONS = {"train": bench_training, "reg": bench_regularization, "memory": bench_memory,
            "switches": bench_switches, "lora": bench_lora}
ORDER = ["lora", "train", "reg", "memory", "switches"]   # lora first: its children start from a small parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 3 minutes: fewer steps and images, no sweep, no compile")
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "toyworld"), help="pipeline folder")
    ap.add_argument("--judge", default=None, help="judge folder (default: <model>-judge)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    ap.add_argument("--work", default="/tmp/dbtutor-bench", help="scratch folder (deleted and re-made)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--reg-images", type=int, default=None, help="images of the slow path (default 60; --quick 8)")
    ap.add_argument("--samplers", default=None, help="sweep, e.g. dpm:10,dpm:15 (default: dpm 10-25, ddim 20/50)")
    ap.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--gc", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n-class", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if args.child_memory:
        return child_memory(args)
    args.judge = args.judge or f"{str(args.model).rstrip('/')}-judge"
    args.warmup, args.steps = (3, 12) if args.quick else (5, 40)
    args.n_slow = args.reg_images or (8 if args.quick else 60)
    w = Path(args.work)
    shutil.rmtree(w, ignore_errors=True)
    from dbtutor import load_config
    d = load_config().model.data
    from dbtutor.toyworld.subjects import load_subject
    render_class_images(w / "class_images", args.n_class, load_subject(d.instance_dir)["object"])
    t0 = time.time()
    say(f"dbtutor benchmark{' (--quick)' if args.quick else ''}: model {args.model}, torch {torch.__version__}, "
        f"{args.threads} thread(s) of {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    only = args.only.split(",")
    for name in only:
        if name not in SECTIONS:
            ap.error(f"--only: unknown section {name}; choose from {','.join(SECTIONS)}")
    for name in ORDER:
        if name in only:
            SECTIONS[name](args)
    say(f"\n== summary ({time.time() - t0:.0f} s) ==")
    say("| measure | result | goal | met |\n|---|---|---|---|")
    for row in SUMMARY:
        say("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
