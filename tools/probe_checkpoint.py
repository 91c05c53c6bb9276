"""Score a pretraining checkpoint's EMA weights on the quality command's scene prompts, while it trains.

    python tools/probe_checkpoint.py [--ckpt work/pretrain/unet.ckpt]     # pause the trainer (kill -STOP) meanwhile

Loads the text encoder + UNet EMA from the checkpoint into the shipped pipeline (same VAE) and prints the judge's
scene and object accuracy on "a photo of a {object} {scene phrase}", 2 seeds each, the seeds of
`python -m dbtutor.toyworld.quality`.
"""
import argparse
from pathlib import Path

from dbtutor.config import ROOT
from dbtutor.fileio import load_torch
from dbtutor.pipeline import load_pipeline, sample
from dbtutor.toyworld import judge as J
from dbtutor.toyworld.world import OBJECTS, SCENE_PHRASE, SCENES

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--ckpt", type=Path, default=ROOT / "work/pretrain/unet.ckpt")
ap.add_argument("--model", default=str(ROOT / "data/models/toyworld"))
args = ap.parse_args()
state = load_torch(args.ckpt)
pipe = load_pipeline(args.model)
for name in ("text_encoder", "unet"):
    getattr(pipe, name).load_state_dict({k[len(name) + 1:]: v for k, v in state["ema"].items()
                                         if k.startswith(name + ".")})
truth = [(o, s) for o in OBJECTS for s in SCENES for _ in range(2)]
images = sample(pipe, [f"a photo of a {o} {SCENE_PHRASE[s]}" for o, s in truth],
                [20_000 + i for i in range(len(truth))], 20, 5.0, "dpm")
pred = J.predict(J.load_judge(ROOT / "data/models/toyworld-judge"), images)
print(f"step {state['step']}: scene {sum(p == s for p, (_, s) in zip(pred['scene'], truth)) / len(truth):.3f}, "
      f"object {sum(p == o for p, (o, _) in zip(pred['object'], truth)) / len(truth):.3f}")
