"""Stable Diffusion v1.5 at 512 px on the CPU, measured in one run: stage times, training step vs a reference and the
compute limit, peak memory of full fine-tuning (gradient checkpointing off / on) and LoRA.

    python bench/sd15_random.py                  # once: the random-weight SD v1.5 pipeline (work/sd15-random)
    python bench/sd15_bench.py [--model work/sd15-random] [--rounds 2] [--threads 2]

Every heavy part runs in a fresh subprocess, so each peak resident memory (Linux VmHWM) is its own. Before each
training configuration the script estimates what it needs and compares that with MemAvailable: what cannot fit
is printed as a skipped row instead of being tried, and each child stops itself (one JSON line, exit 3) if the
machine's available memory falls under --floor GiB anyway. The settings are the GPU command of docs/gpu.md with only
CPU-affordable sizes changed: dog6 photos, 512 px, prior preservation, PNDM, guidance 7.5, batch 1 + 1 class
image, lr 5e-6, fp32. The weights are random; speed and memory depend on the architecture only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # measure the dbtutor of this tree, whatever `pip install -e` points at
from rss import mem_available_gib                         # noqa: E402  (bench/rss.py)
from sd15_children import child_memory, child_stages, watchdog   # noqa: E402  (bench/: this script's children)
from sd15_step import child_timing                         # noqa: E402
from timing import med, paired_ratio, say                  # noqa: E402  (bench/timing.py)

GIB = 2 ** 30
PRIOR_ACTIVATIONS = {False: 10.0, True: 3.0}   # GiB, gc off / on: a first guess until a run has measured them


# ----------------------------------------------------------------------------- in the parent

def run_child(args, mode: str, **flags) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", str(args.model), "--work", str(args.work),
           "--threads", str(args.threads), "--n-class", str(args.n_class), "--sampler-steps", str(args.sampler_steps),
           "--rounds", str(args.rounds), "--resolution", str(args.resolution), "--child-steps", str(args.child_steps),
           "--floor", str(args.floor)]
    for k, v in flags.items():
        cmd += [f"--{k}", str(v)]
    a = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    lines = out.stdout.strip().splitlines()
    if out.returncode == 3 and lines:
        return {**json.loads(lines[-1]), "wall_s": time.time() - a}
    if out.returncode or not lines:
        raise RuntimeError(f"child {mode} {flags} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "wall_s": time.time() - a}


def counts() -> dict:
    """Parameters of SD v1.5's parts and of its LoRA adapters, counted on the meta device (nothing allocated)."""
    from dbtutor.models.sd15 import build_models, parameter_counts
    from dbtutor.models.lora import UNET_TARGETS
    m = build_models("meta")
    n = parameter_counts(m)
    lin = [mod for name, mod in m["unet"].named_modules() if isinstance(mod, torch.nn.Linear)
           and any(name.endswith(t) for t in UNET_TARGETS)]
    n["lora8"] = sum(8 * (mod.in_features + mod.out_features) for mod in lin)
    return n


def pndm_calls(steps: int) -> int:
    """UNet evaluations of SD's PNDM sampler for `steps` (it adds one: PLMS repeats its second timestep)."""
    from diffusers import PNDMScheduler
    from dbtutor.models.sd15 import SCHEDULER_CONFIG
    sched = PNDMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    return len(sched.timesteps)


class Budget:
    """What a training configuration needs (GiB), from what earlier children measured where they could:
    the RSS after loading + 12 bytes per trained parameter (gradient + AdamW's two moments, fp32) + activations
    and transients (a measured peak minus the rest), taken from the nearest configuration measured: the same kind
    (full or LoRA) and gradient checkpointing, else the other kind with the same checkpointing, else a first guess.
    The other kind is only a stand-in: LoRA's peak holds no gradients, so its "activations" over-estimate a full
    fine-tuning's, whose gradients grow while the backward pass frees the activations."""

    def __init__(self, n: dict, load_gib: float):
        self.n, self.load = n, load_gib
        self.activations: dict[tuple[bool, bool], tuple[float, str]] = {}   # (lora?, gc) -> (GiB, where measured)

    def trained(self, lora: int, te: bool) -> int:
        return self.n["lora8"] * lora // 8 if lora else self.n["unet"] + (self.n["text_encoder"] if te else 0)

    def need(self, lora: int, gc: bool, te: bool) -> tuple[float, str]:
        found = self.activations.get((bool(lora), gc)) or self.activations.get((not lora, gc))
        act, how = (found[0], f"activations as measured {found[1]}") if found else \
            (PRIOR_ACTIVATIONS[gc], f"a first guess of {PRIOR_ACTIVATIONS[gc]:.0f} GiB of activations")
        return self.load + 12 * self.trained(lora, te) / GIB + act, how

    def learn(self, label: str, lora: int, gc: bool, te: bool, peak: float):
        act = max(peak - self.load - 12 * self.trained(lora, te) / GIB, 0.0)
        key = (bool(lora), gc)
        if key not in self.activations or act > self.activations[key][0]:
            self.activations[key] = (act, f"in {label}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "work" / "sd15-random"), help="SD v1.5 pipeline folder")
    ap.add_argument("--work", default="/tmp/dbtutor-sd15", help="scratch folder (deleted and re-made)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of each child")
    ap.add_argument("--rounds", type=int, default=2, help="measured training rounds (dbtutor, reference, bare)")
    ap.add_argument("--child-steps", type=int, default=2, help="training steps of each memory child")
    ap.add_argument("--resolution", type=int, default=512, help="image size (512: SD v1.5's)")
    ap.add_argument("--n-class", type=int, default=2, help="class images to generate")
    ap.add_argument("--sampler-steps", type=int, default=2, help="PNDM steps per class image")
    ap.add_argument("--floor", type=float, default=0.75, help="a child stops if MemAvailable falls under this (GiB)")
    ap.add_argument("--margin", type=float, default=1.0, help="GiB kept free when deciding to run a configuration")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    for flag in ("gc", "te", "lora"):
        ap.add_argument(f"--{flag}", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if args.child:
        watchdog(args.floor)
        print(json.dumps({"stages": child_stages, "memory": child_memory, "timing": child_timing}[args.child](args)))
        return
    if not (Path(args.model) / "model_index.json").exists():
        ap.error(f"--model {args.model}: no pipeline there; make it first with python bench/sd15_random.py")
    shutil.rmtree(args.work, ignore_errors=True)
    t0 = time.time()
    say(f"SD v1.5 (random weights): {args.model}, torch {torch.__version__}, {args.threads} thread(s) of "
        f"{os.cpu_count()} CPUs, {args.resolution} px, load average {os.getloadavg()[0]:.1f}, "
        f"MemAvailable {mem_available_gib():.1f} GiB")
    rows = []

    def row(measure, result, note=""):
        rows.append((measure, result, note))
        say(f"  {measure}: {result}  {note}")

    n = counts()
    say("== stages (class images, VAE encoding, text encoding) ==")
    s = run_child(args, "stages")
    if s.get("aborted"):
        raise SystemExit(f"the stages child stopped at {s['rss_gib']:.1f} GiB RSS: not enough memory to load SD")
    row("load the pipeline (fp32)", f"{s['load_s']:.0f} s, {s['load_rss_gib']:.1f} GiB RSS after loading")
    row("class image, per PNDM step (UNet, batch 2 = guidance)", f"{s['step_per_image_s']:.1f} s",
        f"{s['unet_calls']} UNet calls for {s['class_images']} images in one batch")
    row("class image, VAE decode", f"{s['decode_per_image_s']:.1f} s per image")
    row("VAE encode (latent cache)", f"{s['encode_instance_per_image_s']:.1f} s per image",
        f"dog6, 5 photos in one batch; class images {s['encode_class_per_image_s']:.1f} s per image")
    row("text encoder, 2 prompts", f"{1e3 * s['text_encode_s']:.0f} ms")
    row("peak RSS, class images + caching", f"{s['peak_gib']:.1f} GiB")
    budget = Budget(n, s["load_rss_gib"])
    results = {}

    def try_config(label, mode, lora=0, gc=0, te=0):
        need, how = budget.need(lora, bool(gc), bool(te))
        avail = mem_available_gib()
        if need + args.margin > avail:
            row(label, f"skipped: needs ~{need:.0f} GiB (+{args.margin:g} kept free), {avail:.0f} GiB available",
                f"estimate: {how}")
            return None
        say(f"-- {label}: estimated {need:.1f} GiB ({how}), {avail:.1f} GiB available")
        r = run_child(args, mode, lora=lora, gc=gc, te=te)
        if r.get("aborted"):
            row(label, f"did not fit: stopped at {r['peak_gib']:.1f} GiB peak RSS with {r['available_gib']:.1f} GiB "
                       "left on the machine", f"estimate was {need:.1f} GiB ({how})")
            return None
        budget.learn(label, lora, bool(gc), bool(te), r["peak_gib"])
        results[label] = r
        return r

    say("== peak memory of training (fresh subprocesses, 2 steps each) ==")
    mem = [("LoRA r=8, gradient checkpointing off", 8, 0), ("full fine-tuning, gradient checkpointing on", 0, 1),
           ("full fine-tuning, gradient checkpointing off", 0, 0)]
    for label, lora, gc in mem:
        r = try_config(f"peak RSS, {label}", "memory", lora=lora, gc=gc)
        if r:
            row(f"peak RSS, {label}", f"{r['peak_gib']:.1f} GiB",
                f"{r['trainable']:,} trained parameters; step {r['step_s']:.0f} s")
    full_gc_off = "peak RSS, full fine-tuning, gradient checkpointing off" in results
    gc = 0 if full_gc_off else 1
    say(f"== training step: dbtutor vs reference vs compute limit (gradient checkpointing {'on' if gc else 'off'}) ==")
    for te in (0, 1):
        label = f"text encoder {'trained' if te else 'frozen'}"
        r = try_config(f"training step, {label}", "timing", gc=gc, te=te)
        if not r:
            continue
        t = r["times"]
        ref_parts = {k: med(t[k]) for k in ("ref_data", "ref_tokenize", "ref_vae", "ref_text", "ref_unet_opt")}
        removed = ref_parts["ref_data"] + ref_parts["ref_tokenize"] + ref_parts["ref_vae"] + \
            (0 if te else ref_parts["ref_text"])
        row(f"training step, {label} (full fine-tuning)",
            f"dbtutor {med(t['dbtutor']):.1f} s, reference {med(t['reference']):.1f} s, "
            f"bare limit {med(t['bare']):.1f} s", f"medians of {len(t['dbtutor'])} rounds; peak RSS "
                                                  f"{r['peak_gib']:.1f} GiB")
        row(f"share of the reference step that cached latents{'' if te else ' + precomputed embeddings'} remove, "
            f"{label}", f"{100 * removed / med(t['reference']):.0f} %",
            f"data {ref_parts['ref_data']:.2f} s, tokenize {1e3 * ref_parts['ref_tokenize']:.0f} ms, VAE encode "
            f"{ref_parts['ref_vae']:.1f} s, text encode {ref_parts['ref_text']:.2f} s, UNet fwd+bwd+optimizer "
            f"{ref_parts['ref_unet_opt']:.1f} s")
        row(f"reference / dbtutor, {label}", f"{paired_ratio(t['reference'], t['dbtutor']):.2f}x")
        row(f"dbtutor / bare compute limit, {label}", f"{paired_ratio(t['dbtutor'], t['bare']):.3f}x")
        if not te:
            step, calls = med(t["dbtutor"]), pndm_calls(50)
            per_image = calls * s["step_per_image_s"] + s["decode_per_image_s"]
            row(f"one class image at PNDM 50 steps ({calls} UNet calls) + decode, in training steps",
                f"{per_image / step:.2f} steps", f"{per_image:.0f} s per class image vs {step:.0f} s per step: 200 "
                f"class images = {200 * per_image / (800 * step) * 100:.0f} % of 800 steps' time")
    say(f"\n== summary ({time.time() - t0:.0f} s; weights random, SD v1.5 architecture, {args.resolution} px, fp32, "
        "batch 1 + 1) ==")
    say("| measure | result | note |\n|---|---|---|")
    for r in rows:
        say("| " + " | ".join(r) + " |")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
