"""Save a Stable Diffusion v1.5 pipeline with random weights (its exact architecture), for full-size runs offline.

    python bench/sd15_random.py [--out work/sd15-random] [--seed 0] [--dtype fp16|fp32]

Speed and memory depend on the architecture, not on the weights: with this folder as model.pretrained the
GPU command of docs/gpu.md runs at 512 px where no model can be downloaded (it draws noise). fp16 on disk (default)
is 2.1 GB instead of 4.3 GB; dbtutor loads every part in float32 either way. Prints the parameter counts next to
the published ones. The architecture lives in dbtutor/models/sd15.py (tests/test_sd15_shapes.py checks it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # the dbtutor of this tree, whatever `pip install -e` points at


def folder_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e9


def main(argv=None):
    from dbtutor.models.sd15 import DTYPES, PUBLISHED_PARAMS, save_random_pipeline
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "sd15-random", help="folder to create (must not exist)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp16", help="precision on disk (default fp16)")
    args = ap.parse_args(argv)
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()                 # its advice on casting to fp16 with .to(): the cast is the point here
    t0 = time.time()
    counts = save_random_pipeline(args.out, seed=args.seed, dtype=args.dtype)
    print(f"saved Stable Diffusion v1.5's architecture, random weights (seed {args.seed}, {args.dtype}), to "
          f"{args.out}: {folder_gb(args.out):.2f} GB in {time.time() - t0:.0f} s")
    print("| part | parameters | published (SD v1.5) | ratio |\n|---|---|---|---|")
    for name, n in counts.items():
        print(f"| {name} | {n:,} | {PUBLISHED_PARAMS[name]:,} | {n / PUBLISHED_PARAMS[name]:.4f} |")
    total, published = sum(counts.values()), sum(PUBLISHED_PARAMS.values())
    print(f"| total | {total:,} | {published:,} | {total / published:.4f} |")


if __name__ == "__main__":
    main()
