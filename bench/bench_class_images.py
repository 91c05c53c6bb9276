"""bench/bench.py's class-image section: dbtutor's batched generation vs the pipeline called one image at a time,
in images per second and in class fidelity as the judge sees it."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench_setup import make_config, note
from timing import say


# ----------------------------------------------------------------------------- regularization images

def bench_regularization(args):
    from dbtutor.core.fileio import save_image
    from dbtutor.models.pipeline import load_pipeline
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
