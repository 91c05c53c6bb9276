"""Compare VAEs by their reconstruction error on freshly rendered, held-out world images.

    python tools/vae_recon.py work/pretrain/vae.ckpt data/models/toyworld     # a pretrain checkpoint or a pipeline

Renders --n images with a seed that no training set uses, encodes each with the posterior mean, decodes, and
prints the mean squared error per VAE (pixels in [-1, 1]). Used for docs/experiments.md's "a retrain behaves alike".
"""
import argparse
import tempfile
from pathlib import Path

import torch

from dbtutor.core.fileio import load_torch
from dbtutor.toyworld import judge as J
from dbtutor.toyworld.models import make_vae
from dbtutor.toyworld.training import load_set, render_set


def load_vae(path: Path):
    """A pretrain checkpoint's VAE, or the VAE of a diffusers pipeline folder (or of a vae/ folder itself)."""
    try:
        if path.is_dir():
            from diffusers import AutoencoderKL
            return AutoencoderKL.from_pretrained(path / "vae" if (path / "vae").is_dir() else path)
        state = load_torch(path)["model"]["vae"]
    except Exception as e:                                  # not a torch file, another stage's checkpoint, ...
        raise SystemExit(f"{path}: not a pretrain vae.ckpt or a pipeline folder ({type(e).__name__})") from None
    vae = make_vae()
    vae.load_state_dict(state)
    return vae


@torch.no_grad()
def recon_mse(vae, x, batch: int = 250) -> float:
    vae.eval()
    errs = []
    for i in range(0, len(x), batch):
        xb = J.to_tensor(x[i:i + batch])
        rec = vae.decode(vae.encode(xb).latent_dist.mean).sample
        errs.append(((rec - xb) ** 2).mean(dim=(1, 2, 3)))
    return float(torch.cat(errs).mean())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vaes", nargs="+", type=Path, help="pretrain vae.ckpt files or pipeline folders")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=90_001, help="render seed (pretrain uses seed+1, train_judge +2/+3)")
    args = ap.parse_args()
    for p in args.vaes:
        if not p.exists():
            raise SystemExit(f"{p}: no such checkpoint or pipeline folder")
    vaes = [load_vae(p) for p in args.vaes]                 # bad files fail before the rendering
    with tempfile.TemporaryDirectory() as tmp:
        render_set(Path(tmp) / "heldout", args.n, seed=args.seed)
        x, _ = load_set(Path(tmp) / "heldout")
    for p, vae in zip(args.vaes, vaes):
        print(f"{p}: reconstruction MSE {recon_mse(vae, x):.5f} on {args.n} held-out images")
