"""bench/sd15_bench.py's timing child: train() with a reference step and the bare compute limit interleaved in its
callback, on train()'s own model and optimizer."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rss import gib, peak_rss_mb
from sd15_children import capture_training_objects, make_config


class Contenders:
    """Inside train()'s callback, on train()'s own UNet, text encoder and optimizer (a second copy of SD's
    training state would not fit): the reference step (what caching and precomputed embeddings remove done every
    step: read + preprocess the images, tokenize, VAE encode, text encode; then UNet forward + backward, clipping,
    optimizer) and the bare compute limit (UNet, and text encoder if trained, forward + backward + optimizer on
    fixed tensors). dbtutor's own step is timed between two callbacks."""

    def __init__(self, cfg, got, warmup: int):
        from diffusers import DDPMScheduler
        from dbtutor.data import DreamBoothDataset, collate
        from dbtutor.latent_cache import latent_shape
        self.cfg, self.got, self.warmup, self.last = cfg, got, warmup, None
        d = cfg.model.data
        pipe = got["pipe"]
        self.unet, self.te, self.vae, self.tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.train_te = bool(cfg.model.train_text_encoder)
        ds = DreamBoothDataset(d.instance_dir, d.instance_prompt, d.resolution, d.center_crop,
                               d.regularization_dir, d.regularization_prompt)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, collate_fn=collate)
        self.it = iter(self.loader)
        self.ids = self.tokenize([d.instance_prompt, d.regularization_prompt])
        g = torch.Generator().manual_seed(0)
        z = torch.randn(2, *latent_shape(self.vae, d.resolution), generator=g)
        self.noise = torch.randn(z.shape, generator=g)
        self.t = torch.randint(0, 1000, (2,), generator=g)
        self.noisy = self.sched.add_noise(z, self.noise, self.t)
        with torch.no_grad():
            self.emb = self.te(self.ids)[0]
        self.times = {k: [] for k in ("dbtutor", "reference", "bare", "ref_data", "ref_tokenize", "ref_vae",
                                      "ref_text", "ref_unet_opt")}

    def tokenize(self, prompts):
        return self.tok(prompts, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids

    def finish(self, loss):
        loss.backward()
        if self.cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.got["params"], self.cfg.optim.max_grad_norm, foreach=True)
        self.got["opt"].step()
        self.got["opt"].zero_grad(set_to_none=True)

    def bare(self):
        enc = self.te(self.ids)[0] if self.train_te else self.emb
        pred = self.unet(self.noisy, self.t, enc).sample
        self.finish(F.mse_loss(pred, self.noise))

    def reference(self) -> dict:
        marks = [time.perf_counter()]
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        marks.append(time.perf_counter())
        ids = self.tokenize(batch["prompts"])
        marks.append(time.perf_counter())
        with torch.no_grad():
            z = self.vae.encode(batch["pixel_values"]).latent_dist.sample() * self.vae.config.scaling_factor
        marks.append(time.perf_counter())
        with torch.set_grad_enabled(self.train_te):
            enc = self.te(ids)[0]
        marks.append(time.perf_counter())
        noise = torch.randn_like(z)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (z.shape[0],))
        pred = self.unet(self.sched.add_noise(z, noise, t), t, enc).sample
        p, p_prior = torch.chunk(pred, 2)
        n, n_prior = torch.chunk(noise, 2)
        self.finish(F.mse_loss(p, n) + F.mse_loss(p_prior, n_prior))
        marks.append(time.perf_counter())
        parts = ("ref_data", "ref_tokenize", "ref_vae", "ref_text", "ref_unet_opt")
        return {k: b - a for k, a, b in zip(parts, marks, marks[1:])}

    def __call__(self, rec):
        now = time.perf_counter()
        record = rec["step"] > self.warmup
        if self.last is not None and record:
            self.times["dbtutor"].append(now - self.last)
        order = ("reference", "bare") if rec["step"] % 2 else ("bare", "reference")
        for name in order:
            a = time.perf_counter()
            parts = self.reference() if name == "reference" else self.bare()
            if record:
                self.times[name].append(time.perf_counter() - a)
                for k, v in (parts or {}).items():
                    self.times[k].append(v)
        self.last = time.perf_counter()


def child_timing(args) -> dict:
    """train() with the reference and bare steps interleaved in its callback (text encoder frozen or trained)."""
    from dbtutor.train import train
    got = capture_training_objects()
    cfg = make_config(args, **{"model.gradient_checkpointing": bool(args.gc),
                               "model.train_text_encoder": bool(args.te), "trainer.max_steps": args.rounds + 1,
                               "output_dir": str(Path(args.work) / f"time_{args.te}")})
    box = {}

    def cb(rec):
        if "c" not in box:
            box["c"] = Contenders(cfg, got, warmup=1)
        box["c"](rec)
    res = train(cfg, progress=False, callback=cb)
    shutil.rmtree(res.output_dir, ignore_errors=True)
    return {"times": box["c"].times, "peak_gib": gib(peak_rss_mb()), "load_rss_gib": got["load_rss_gib"]}
