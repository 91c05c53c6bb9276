"""dbtutor's speed, measured side by side in one run: training step vs a reference loop and the compute limit,
batched class-image generation vs one image at a time, memory with gradient checkpointing, CPU switches.

    python bench/bench.py [--quick] [--model PATH] [--judge PATH] [--threads N]

Every comparison alternates its contenders step by step (or batch by batch) and takes medians, so that the noise
of a busy machine hits both sides alike; the ratios are what count, absolute times depend on the machine.
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

from rss import peak_rss_mb                    # bench/rss.py: VmHWM, right in a subprocess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # measure the dbtutor of this tree, whatever `pip install -e` points at
from bench_class_images import bench_regularization                   # noqa: E402  (bench/: this script's parts)
from bench_setup import SUMMARY, make_config, note, render_class_images   # noqa: E402
from bench_step import bench_switches, bench_training                     # noqa: E402
from timing import say                                                    # noqa: E402


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
