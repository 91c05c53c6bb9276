"""How good is the base model's prior? Sample fixed prompts and let the judge score them.

    python -m dbtutor.toyworld.quality [--model data/models/toyworld] [--judge data/models/toyworld-judge]
"""
from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

from ..core.config import ROOT
from ..core.fileio import write_json
from ..core.provenance import provenance, shown_path
from ..models.model_source import model_fingerprint
from ..models.pipeline import load_pipeline, sample
from . import judge as J
from .world import COLORS, LOOKS, OBJECTS, SCENE_PHRASE, SCENES, article

TARGETS = {"object": 0.90, "color": 0.85, "scene": 0.85, "class_color_entropy": 0.80, "subject_looks": 0.02}


def normalised_entropy(names: list[str], classes: list[str]) -> float:
    counts = Counter(names)
    n = sum(counts.values())
    h = -sum(c / n * math.log(c / n) for c in counts.values() if c)
    return h / math.log(len(classes))


def judged(pipe, judge, prompts: list[str], k: int, seed0: int, steps: int = 20, guidance: float = 5.0,
           scheduler: str = "dpm"):
    """Each prompt k times with seeds seed0, seed0+1, ...: (images, the judge's predictions)."""
    ps = [p for p in prompts for _ in range(k)]
    images = sample(pipe, ps, [seed0 + i for i in range(len(ps))], steps, guidance, scheduler)
    return images, J.predict(judge, images)


def scene_quality(pipe, judge, steps: int = 20, guidance: float = 5.0, scheduler: str = "dpm"):
    """The scene prompts, every object x scene with 2 seeds: (images, predictions, scene and object accuracy).
    prior_quality's scene part, and on its own a quick probe during pretraining."""
    scene_prompts = [(o, s) for o in OBJECTS for s in SCENES]
    images, pred = judged(pipe, judge, [f"a photo of a {o} {SCENE_PHRASE[s]}" for o, s in scene_prompts], 2,
                          20_000, steps, guidance, scheduler)
    truth = [(o, s) for o, s in scene_prompts for _ in range(2)]
    return images, pred, {"scene": sum(p == s for p, (_, s) in zip(pred["scene"], truth)) / len(truth),
                          "scene_object": sum(p == o for p, (o, _) in zip(pred["object"], truth)) / len(truth)}


def prior_quality(pipe, judge, seeds_per_prompt: int = 3, class_seeds: int = 16, steps: int = 20,
                  guidance: float = 5.0, scheduler: str = "dpm") -> dict:
    """Judge-scored accuracy of the prior on colour/object, scene and bare-class prompts (fixed seeds)."""
    pairs = [(c, o) for o in OBJECTS for c in COLORS]
    im1, p1 = judged(pipe, judge, [f"a photo of {article(c)} {c} {o}" for c, o in pairs], seeds_per_prompt, 10_000,
                     steps, guidance, scheduler)
    truth = [(c, o) for c, o in pairs for _ in range(seeds_per_prompt)]
    im2, p2, scene = scene_quality(pipe, judge, steps, guidance, scheduler)
    im3, p3 = judged(pipe, judge, [f"a photo of a {o}" for o in OBJECTS], class_seeds, 30_000, steps, guidance,
                     scheduler)
    class_colors = [p3["color"][i * class_seeds:(i + 1) * class_seeds] for i in range(len(OBJECTS))]
    looks = p1["look"] + p2["look"] + p3["look"]
    res = {
        "object": sum(p == o for p, (_, o) in zip(p1["object"], truth)) / len(truth),
        "color": sum(p == c for p, (c, _) in zip(p1["color"], truth)) / len(truth),
        **scene,
        "class_object": sum(p == OBJECTS[i // class_seeds] for i, p in enumerate(p3["object"])) / len(p3["object"]),
        "class_color_entropy": sum(normalised_entropy(c, list(COLORS)) for c in class_colors) / len(class_colors),
        "subject_looks": sum(lk != "ordinary" for lk in looks) / len(looks),
        "n_images": len(looks),
    }
    res["looks_seen"] = {lk: looks.count(lk) for lk in LOOKS}
    res["grid"] = {"color_object": im1[::seeds_per_prompt][:48], "class": im3}
    return res


def report(res: dict) -> str:
    rows = [("object right, 'a photo of a {color} {object}'", "object", ">="),
            ("colour right, same prompts", "color", ">="),
            ("scene right, 'a photo of a {object} {scene phrase}'", "scene", ">="),
            ("colour spread for 'a photo of a {object}' (normalised entropy)", "class_color_entropy", ">="),
            ("samples showing a subject's look (any prompt)", "subject_looks", "<")]
    lines = ["| measure | value | target |", "|---|---|---|"]
    for label, key, op in rows:
        ok = res[key] >= TARGETS[key] if op == ">=" else res[key] < TARGETS[key]
        lines.append(f"| {label} | {res[key]:.3f} | {op} {TARGETS[key]} {'ok' if ok else 'MISSED'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="score the base model's prior with the judge")
    ap.add_argument("--model", default=str(ROOT / "data/models/toyworld"))
    ap.add_argument("--judge", default=str(ROOT / "data/models/toyworld-judge"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "quality")
    args = ap.parse_args(argv)
    t0 = time.time()
    res = prior_quality(load_pipeline(args.model), J.load_judge(args.judge), steps=args.steps, guidance=args.guidance)
    from ..core.figures import save_grid
    grid = res.pop("grid")
    save_grid(grid["color_object"], args.out / "prior_color_object.png", rows=len(OBJECTS),
              row_labels=OBJECTS, col_labels=list(COLORS), title="a photo of a {color} {object}")
    save_grid(grid["class"][::2], args.out / "prior_class.png", rows=len(OBJECTS),
              row_labels=[f"a photo of a {o}" for o in OBJECTS], title="bare class prompts, different seeds")
    seconds = time.time() - t0
    write_json(args.out / "quality.json", {
        "kind": "quality", **res, "targets": TARGETS, "seconds": seconds, "provenance": provenance(),
        "settings": {"model": shown_path(args.model), "model_fingerprint": model_fingerprint(args.model),
                     "judge": shown_path(args.judge), "judge_fingerprint": model_fingerprint(args.judge),
                     "steps": args.steps, "guidance": args.guidance, "scheduler": "dpm"}})
    print(report(res))
    print(f"{res['n_images']} images judged in {seconds:.0f} s; grids in {args.out}, scores in quality.json")


if __name__ == "__main__":
    main()
