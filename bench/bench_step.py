"""The training step's speed in bench/bench.py: its contenders (the compute limit, a reference step as diffusers'
example script takes it), the train section that times them against train()'s own steps, and the CPU switches."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_setup import fixed_batch, make_config, note, shared_pipe
from timing import med, paired_ratio, say


# ----------------------------------------------------------------------------- the contenders of a training step

class Bare:
    """The compute limit: UNet (and, if trained, text encoder) forward + backward + dbtutor's optimizer step on
    fixed latents, noise, timesteps and embeddings. Nothing else."""

    def __init__(self, cfg, batch, channels_last=False, bf16=False, compile=False, train_te=None, clip=False):
        from dbtutor.models.pipeline import load_pipeline
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
        from dbtutor.models.pipeline import load_pipeline
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


def bench_training(args):
    from dbtutor.train import train
    say("\n== training step: dbtutor vs a reference loop (diffusers-style) vs the compute limit ==")
    say(f"batch: {1} instance + {1} class image(s), {args.steps} measured steps after {args.warmup} warm-up; "
        f"dbtutor = train() on the default config")
    for train_te in (False, True):
        label = "text encoder trained" if train_te else "text encoder frozen"
        cfg = make_config(args, **{"model.train_text_encoder": train_te,
                                   "trainer.max_steps": args.warmup + args.steps + 1})
        batch = fixed_batch(cfg, shared_pipe(args))
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


# ----------------------------------------------------------------------------- CPU switches

def bench_switches(args):
    say("\n== CPU switches: step time of the bare step (UNet fwd+bwd+AdamW, frozen text encoder) vs the default ==")
    cfg = make_config(args, **{"model.train_text_encoder": False})
    batch = fixed_batch(cfg, shared_pipe(args))
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
