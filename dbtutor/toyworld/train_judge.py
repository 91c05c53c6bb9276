"""Train the judge on rendered world images (never generated ones) and print its held-out accuracy. Resumable.

    python -m dbtutor.toyworld.train_judge --out data/models --work work/pretrain

Renders a labelled training set (20 % of it showing a subject's look) and a held-out test set, trains the
classifier of dbtutor.toyworld.judge, and saves it to --out/toyworld-judge with its held-out accuracy per
attribute. It is separate from `pretrain` (the base model never needs it); the evaluation does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import judge as J
from .training import load_set, render_set, train_loop


def train_judge(work: Path, out: Path, seed: int = 0, steps: int = 2500) -> dict:
    """Train (or resume) the judge on work/judge_train, score it on work/judge_test, save it; the accuracies."""
    x, attrs = load_set(work / "judge_train")
    xt, attrs_t = load_set(work / "judge_test")
    labels = {k: torch.tensor([J.labels_of(a)[k] for a in attrs]) for k in J.HEADS}
    torch.manual_seed(seed)
    judge = J.Judge()

    def step_fn(g, step):
        idx = torch.randint(len(x), (64,), generator=g)
        xb = J.augment(J.to_tensor(x[idx.numpy()]), g)
        if bool(torch.rand(1, generator=g) < 0.5):
            xb = xb.flip(3)
        logits = judge(xb)
        losses = {k: F.cross_entropy(v, labels[k][idx], ignore_index=J.IGNORE) for k, v in logits.items()}
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    train_loop("judge", work, steps, seed, list(judge.parameters()), {"judge": judge}, step_fn, lr=2e-3)
    pred = J.predict(judge, xt)
    acc = {}
    for k in J.HEADS:
        pairs = [(p, getattr(a, k)) for p, a in zip(pred[k], attrs_t) if J.labels_of(a)[k] != J.IGNORE]
        acc[k] = sum(p == t for p, t in pairs) / len(pairs)
    J.save_judge(judge, out / "toyworld-judge", acc)
    return acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/models"))
    ap.add_argument("--work", type=Path, default=Path("work/pretrain"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=24_000, help="training images (default 24,000)")
    ap.add_argument("--steps", type=int, default=2500)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    render_set(args.work / "judge_train", args.n_images, seed=args.seed + 2, p_look=0.2)
    render_set(args.work / "judge_test", 3000, seed=args.seed + 3, p_look=0.2)
    acc = train_judge(args.work, args.out, args.seed, args.steps)
    print("judge held-out accuracy:", json.dumps({k: round(v, 4) for k, v in acc.items()}))
    print(f"saved the judge to {args.out / 'toyworld-judge'}")


if __name__ == "__main__":
    main()
