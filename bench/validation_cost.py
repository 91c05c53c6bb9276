"""What samples along the way (trainer.validation) cost: train() with validation off and on, alternating.

    python bench/validation_cost.py [--steps 100] [--rounds 3] [--every 100] [--num-images 1] [--threads 1]

Both variants run the default config (configs/dreambooth.yaml: toy model, twotone_ball, prior preservation) for
--steps steps into fresh output folders, on the same class images and latent cache (made once, first), one after
the other in each round, so the load of a busy machine hits both alike. Printed per round: the wall time of each
train() call and their ratio (a short run has relatively more validations than the default run: at 0 and at its
end), and the projected extra time of the default run's training loop (trainer.max_steps of the config,
validations at 0, every, ..., last) from the "on" run's own times of one validation (validation.json) and one
training step (between two calls of train()'s per-step callback, validation steps left out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # measure the dbtutor of this tree, whatever `pip install -e` points at


def run(work: Path, name: str, steps: int, every: int, num_images: int) -> dict:
    import dbtutor
    cfg = dbtutor.load_config(overrides={
        "output_dir": str(work / name), "model.data.regularization_dir": str(work / "class_images"),
        "model.data.cached_instance_dir": str(work / "cache" / "instance"),
        "model.data.cached_reg_dir": str(work / "cache" / "class"), "trainer.max_steps": steps,
        "trainer.checkpoint_every": 0, "trainer.resume": False, "trainer.progress": False,
        "trainer.validation.every": every, "trainer.validation.num_images": num_images})
    ticks = []
    t0 = time.perf_counter()
    dbtutor.train(cfg, callback=lambda rec: ticks.append((rec["step"], time.perf_counter())))
    seconds = time.perf_counter() - t0
    vals = []
    if every:
        vals = [r["seconds"] for r in json.loads((work / name / "validation" / "validation.json").read_text())
                ["validations"]]
    due = {s for s in range(steps + 1) if every and (s % every == 0 or s == steps)}
    step_times = [b[1] - a[1] for a, b in zip(ticks, ticks[1:]) if b[0] not in due]
    return {"seconds": seconds, "validations": vals, "step": statistics.median(step_times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=int, default=None, help="default: the config's trainer.validation.every")
    ap.add_argument("--num-images", type=int, default=None, help="default: the config's trainer.validation.num_images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "bench_validation")
    args = ap.parse_args()
    import torch
    import dbtutor
    if args.threads:
        torch.set_num_threads(args.threads)
    default = dbtutor.load_config()
    every = default.trainer.validation.every if args.every is None else args.every
    num = default.trainer.validation.num_images if args.num_images is None else args.num_images
    if every < 1:
        sys.exit("--every must be at least 1 (0 turns validation off)")
    print(f"{args.steps} steps, validation every {every} steps with {num} image(s) per prompt, "
          f"{torch.get_num_threads()} thread(s)")
    run(args.work, "warmup", 2, 0, num)                 # class images and latent cache, made once
    total = default.trainer.max_steps
    n_val = len({s for s in range(total + 1) if s % every == 0 or s == total})
    ratios, projected, vals, steps = [], [], [], []
    for r in range(args.rounds):
        order = [("off", 0), ("on", every)] if r % 2 == 0 else [("on", every), ("off", 0)]
        res = {name: run(args.work, name, args.steps, e, num) for name, e in order}
        ratios.append(res["on"]["seconds"] / res["off"]["seconds"])
        on = res["on"]
        t_val = statistics.mean(on["validations"])
        projected.append(n_val * t_val / (total * on["step"]))     # both from the same run: the same load
        vals.append(t_val)
        steps.append(on["step"])
        print(f"round {r + 1}: off {res['off']['seconds']:.1f} s (steps of {res['off']['step'] * 1000:.0f} ms), "
              f"on {on['seconds']:.1f} s ({len(on['validations'])} validations of {t_val:.2f} s, steps of "
              f"{on['step'] * 1000:.0f} ms): ratio {ratios[-1]:.3f}, projected for the default run "
              f"+{100 * projected[-1]:.1f} %")
    from dbtutor.runs.validation import validation_prompts
    print(f"median ratio of the two {args.steps}-step runs (on / off): {statistics.median(ratios):.3f}")
    print(f"one validation {statistics.median(vals):.2f} s ({len(validation_prompts(default))} prompts x {num} "
          f"image(s)), one training step {statistics.median(steps) * 1000:.0f} ms (medians)")
    print(f"projected for the default run ({total} steps, {n_val} validations), each round's validation and step "
          f"times from the same run: training loop +{100 * statistics.median(projected):.1f} % (median)")

if __name__ == "__main__":
    main()
