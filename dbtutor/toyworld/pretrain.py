"""Train the embedded base model from scratch on the toy world: VAE, then text encoder + UNet. Resumable.

    python -m dbtutor.toyworld.pretrain --out data/models --work work/pretrain

Each stage checkpoints atomically every few hundred steps into --work and skips itself when done, so an
interrupted run continues where it stopped. Every random draw is derived from (seed, stage, step).
The judge that scores the result has its own command, `python -m dbtutor.toyworld.train_judge`. The stages are in
pretrain_stages.py, the resumable loop they share with the judge in training.py; here: their order and the export.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ..core.config import ROOT
from ..core.errors import ConfigError
from ..core.fileio import write_json
from ..models.pipeline import sd_layout
from .models import make_pipeline_scheduler
from .pretrain_stages import stage_latents, stage_unet, stage_vae
from .tokenizer import prepare_tokenizer
from .training import render_set

SHIPPED_CARD = ROOT / "data" / "models" / "toyworld" / "README.md"


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
