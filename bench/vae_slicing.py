"""VAE slicing on the embedded model, side by side: decoding a class-image batch whole vs one image at a time.

    python bench/vae_slicing.py [--model data/models/toyworld] [--batch 25] [--rounds 5] [--threads 1]

Prints the median time of each (rounds interleaved), their ratio, and how far the decoded images differ (float and
8-bit pixels). dbtutor.models.pipeline.SLICE_FROM_PX decides where sample() slices: this is why it does not below it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "toyworld"))
    ap.add_argument("--batch", type=int, default=25, help="images per decode (num_images_per_prompt's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dbtutor.models.pipeline import load_pipeline
    pipe = load_pipeline(args.model)
    vae = pipe.vae
    side = pipe.unet.config.sample_size
    z = torch.randn(args.batch, vae.config.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
    times, out = {False: [], True: []}, {}
    for r in range(args.rounds):
        for sliced in ((False, True) if r % 2 else (True, False)):
            vae.enable_slicing() if sliced else vae.disable_slicing()
            t = time.perf_counter()
            with torch.no_grad():
                out[sliced] = vae.decode(z / vae.config.scaling_factor).sample
            times[sliced].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    px = {k: ((v / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8) for k, v in out.items()}
    print(f"{args.batch} images at {side * pipe.vae_scale_factor} px, {args.threads} thread(s), medians of "
          f"{args.rounds}: whole batch {1e3 * med[False]:.0f} ms, one at a time {1e3 * med[True]:.0f} ms, ratio "
          f"{med[True] / med[False]:.2f}; max difference {(out[True] - out[False]).abs().max():.1e} "
          f"(8-bit pixels: {(px[True].int() - px[False].int()).abs().max()} levels)")


if __name__ == "__main__":
    main()
