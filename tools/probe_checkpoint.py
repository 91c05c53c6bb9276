"""Score a pretraining checkpoint's EMA weights on the quality command's scene prompts, while it trains.

    python tools/probe_checkpoint.py [--ckpt work/pretrain/unet.ckpt]     # pause the trainer (kill -STOP) meanwhile

Loads the text encoder + UNet EMA from the checkpoint into the shipped pipeline (same VAE) and prints the judge's
scene and object accuracy on the scene prompts of `python -m dbtutor.toyworld.quality` (same prompts and seeds).
"""
import argparse
from pathlib import Path

from dbtutor.core.config import ROOT
from dbtutor.core.fileio import load_torch
from dbtutor.models.pipeline import load_pipeline
from dbtutor.toyworld import judge as J
from dbtutor.toyworld.quality import scene_quality
from dbtutor.toyworld.training import load_ema

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--ckpt", type=Path, default=ROOT / "work/pretrain/unet.ckpt")
ap.add_argument("--model", default=str(ROOT / "data/models/toyworld"))
args = ap.parse_args()
state = load_torch(args.ckpt)
pipe = load_pipeline(args.model)
load_ema({"text_encoder": pipe.text_encoder, "unet": pipe.unet}, state["ema"])
scores = scene_quality(pipe, J.load_judge(ROOT / "data/models/toyworld-judge"))[2]
print(f"step {state['step']}: scene {scores['scene']:.3f}, object {scores['scene_object']:.3f}")
