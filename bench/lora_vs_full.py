"""LoRA vs full fine-tuning on the same subject: trainable parameters, sizes on disk, step time, peak memory, metrics.

    python bench/lora_vs_full.py [--quick] [--model PATH] [--judge PATH] [--ranks 4,16] [--steps N] [--out DIR]

Each variant trains in its own subprocess (so each peak resident memory is its own) with the default config
(configs/dreambooth.yaml: the shipped subject twotone_ball, prior preservation, text encoder frozen), on the same
class images and latent cache. Full fine-tuning uses optim.lr of the config; LoRA updates far fewer numbers and
is usually run with a larger rate (--lora-lr). Then, if dbtutor.measuring.evaluate and the judge exist, each trained model
is scored on the subject (judge back end). From bench/bench.py: `from lora_vs_full import run, format_table`.

Memory is the child's peak RSS (VmHWM on Linux, bench/rss.py: ru_maxrss would report the parent's peak); tracemalloc is not used because it sees only Python's allocator,
not the tensors. "setup" is the RSS after the imports, before train() loads the model.
The table and the numbers behind it go to --out (results.md, results.json: what docs/results.md is made from).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # measure the dbtutor of this tree, whatever `pip install -e` points at
from rss import peak_rss_mb                    # noqa: E402  (bench/rss.py: VmHWM, right in a subprocess)


def default_model() -> Path:
    return ROOT / "data" / "models" / "toyworld"


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def make_config(model, work: Path, rank: int, lr: float, steps: int, n_class: int):
    from dbtutor import load_config
    work = Path(work)
    return load_config(overrides={
        "model.pretrained": str(model), "output_dir": str(work / f"rank{rank}"),
        "model.data.regularization_dir": str(work / "class_images"), "model.data.num_reg_images": n_class,
        "model.data.cached_instance_dir": str(work / "cache" / "instance"),
        "model.data.cached_reg_dir": str(work / "cache" / "class"),
        "model.lora.rank": rank, "optim.lr": lr, "trainer.max_steps": steps, "trainer.checkpoint_every": 0,
        "trainer.keep_checkpoints": True,                                # the last checkpoint is measured below
        "trainer.resume": False, "trainer.progress": False})


def child(spec: dict) -> dict:
    """In a fresh process: train one variant, measure it, optionally evaluate it; return the numbers."""
    import torch
    from dbtutor.models.lora import WEIGHT_NAME, add_lora, count_parameters
    from dbtutor.models.pipeline import load_pipeline
    from dbtutor.train import train
    from dbtutor.runs import checkpoint as ckpt
    cfg = make_config(spec["model"], Path(spec["work"]), spec["rank"], spec["lr"], spec["steps"], spec["n_class"])
    setup_mb = peak_rss_mb()
    stamps = []
    res = train(cfg, progress=False, callback=lambda rec: stamps.append(time.perf_counter()))
    peak_mb = peak_rss_mb()
    steps = [b - a for a, b in zip(stamps[2:], stamps[3:])]            # after two warm-up steps
    out = Path(res.output_dir)
    pipe = load_pipeline(spec["model"])                                 # count what train() updated
    add_lora(cfg, pipe.unet, pipe.text_encoder)
    total = sum(p.numel() for m in (pipe.unet, pipe.text_encoder) for p in m.parameters())
    row = {"variant": f"LoRA r={spec['rank']}" if spec["rank"] else "full", "rank": spec["rank"], "lr": spec["lr"],
           "trainable": count_parameters(cfg, pipe.unet, pipe.text_encoder), "params": total,
           "adapter_mb": folder_bytes(out / WEIGHT_NAME) / 2 ** 20 if spec["rank"] else None,
           "pipeline_mb": sum(folder_bytes(out / p) for p in ("unet", "text_encoder", "vae")) / 2 ** 20,
           "checkpoint_mb": folder_bytes(ckpt.step_dir(out, spec["steps"])) / 2 ** 20,
           "step_ms": 1e3 * statistics.median(steps) if steps else float("nan"),
           "peak_mb": peak_mb, "setup_mb": setup_mb, "threads": torch.get_num_threads(), "steps": spec["steps"]}
    if spec.get("judge"):
        from dbtutor.measuring.evaluate import evaluate
        ev = evaluate(out, cfg.model.data.instance_dir, backend="judge", num_samples=spec["num_samples"],
                      class_samples=spec["class_samples"], judge_dir=spec["judge"])
        row["metrics"] = ev["metrics"]
    return row


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"{spec['rank'] and 'LoRA' or 'full'} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def base_metrics(model, judge, num_samples, class_samples) -> dict:
    from dbtutor import load_config
    from dbtutor.measuring.evaluate import evaluate
    d = load_config().model.data
    return evaluate(model, d.instance_dir, backend="judge", num_samples=num_samples, class_samples=class_samples,
                    judge_dir=judge)["metrics"]


def run(model=None, judge=None, work="/tmp/dbtutor-bench-lora", quick=False, ranks=None, steps=None,
        lora_lr=1e-3, evaluate=True, log=print) -> list[dict]:
    """Train full fine-tuning and LoRA at each rank in subprocesses; returns one dict per variant (plus 'base'
    metrics when evaluated). Quick: 20 steps, 8 class images, rank 4, no evaluation."""
    from dbtutor import generate_regularization, load_config
    from dbtutor.models.pipeline import load_pipeline
    model = Path(model or default_model())
    judge = Path(judge) if judge else Path(f"{str(model).rstrip('/')}-judge")
    ranks = ranks or ((4,) if quick else (4, 16))
    steps = steps or (20 if quick else load_config().trainer.max_steps)
    n_class = 8 if quick else load_config().model.data.num_reg_images
    evaluate = evaluate and not quick and judge.exists()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    full_lr = float(load_config().optim.lr)
    cfg = make_config(model, work, 0, full_lr, steps, n_class)
    log(f"model {model}; {steps} steps, batch 1 + 1 class image, {n_class} class images; "
        f"{'judge ' + str(judge) if evaluate else 'no evaluation'}")
    generate_regularization(cfg, load_pipeline(model), progress=False)   # once, shared by every variant
    specs = [{"rank": r, "lr": full_lr if r == 0 else lora_lr} for r in (0, *ranks)]
    rows = []
    for s in specs:
        spec = {**s, "model": str(model), "work": str(work), "steps": steps, "n_class": n_class,
                "judge": str(judge) if evaluate else None, "num_samples": 4, "class_samples": 16}
        t = time.time()
        rows.append(run_child(spec))
        log(f"  {rows[-1]['variant']}: done in {time.time() - t:.0f} s")
    if evaluate:
        rows.append({"variant": "base (untrained)", "metrics": base_metrics(model, judge, 4, 16)})
    return rows


METRIC_COLS = [("subject_attr", "subject"), ("prompt_attr", "prompt"), ("pres_attr", "PRES"), ("subject_sim", "sim"),
               ("div", "DIV")]


def format_table(rows: list[dict]) -> str:
    """A markdown table: one row per variant."""
    def f(x, fmt):
        return "-" if x is None or x != x else format(x, fmt)
    has_m = any("metrics" in r for r in rows)
    head = ["variant", "lr", "trainable params", "adapter file", "pipeline", "checkpoint", "step", "peak RSS"]
    head += [h for _, h in METRIC_COLS] if has_m else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "trainable" in r:
            cells = [r["variant"], f(r["lr"], "g"), f"{r['trainable']:,} ({100 * r['trainable'] / r['params']:.2f}%)",
                     f(r["adapter_mb"], ".2f") + (" MB" if r["adapter_mb"] else ""), f(r["pipeline_mb"], ".1f") + " MB",
                     f(r["checkpoint_mb"], ".1f") + " MB", f(r["step_ms"], ".0f") + " ms",
                     f"{r['peak_mb']:.0f} MB (+{r['peak_mb'] - r['setup_mb']:.0f})"]
        else:
            cells = [r["variant"]] + ["-"] * 7
        if has_m:
            m = r.get("metrics", {})
            cells += [f(m.get(k), ".2f") for k, _ in METRIC_COLS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["adapter file: pytorch_lora_weights.safetensors (what base + load_lora_weights needs); pipeline: "
             "unet + text_encoder + vae as saved (for LoRA the fused copy); checkpoint: weights + AdamW state of the "
             "last checkpoint; step: median training step; peak RSS: VmHWM of the training process (+ over "
             "imports only)."]
    if has_m:
        notes.append("metrics (judge; see dbtutor/measuring/evaluate.py): subject = share of subject samples judged the "
                     "subject (higher), prompt = prompt fidelity (higher), PRES = share of bare-class samples "
                     "judged the subject's look (lower), sim = embedding similarity to the real images, "
                     "DIV = diversity.")
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 steps, rank 4, no evaluation (about a minute)")
    ap.add_argument("--model", default=None, help="pipeline folder (default: data/models/toyworld)")
    ap.add_argument("--judge", default=None, help="judge folder (default: <model>-judge)")
    ap.add_argument("--ranks", default=None, help="comma-separated LoRA ranks (default 4,16; --quick: 4)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's; --quick: 20)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--work", default="/tmp/dbtutor-bench-lora", help="scratch folder")
    ap.add_argument("--out", default=str(ROOT / "work" / "lora_vs_full"),
                    help="where results.json and results.md go (default: work/lora_vs_full)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import warnings
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    ranks = tuple(int(r) for r in args.ranks.split(",")) if args.ranks else None
    t0 = time.time()
    rows = run(args.model, args.judge, args.work, args.quick, ranks, args.steps, args.lora_lr, not args.no_eval)
    table = format_table(rows)
    print(table)
    seconds = time.time() - t0
    write_results(Path(args.out), rows, table, seconds, quick=args.quick, model=args.model or default_model(),
                  lora_lr=args.lora_lr)
    print(f"({seconds:.0f} s; wrote {Path(args.out) / 'results.json'} and results.md)")


def write_results(out: Path, rows: list[dict], table: str, seconds: float, quick: bool, model, lora_lr: float):
    """results.json (the rows, settings, provenance: what tools/results_tables.py renders) and results.md."""
    from dbtutor import load_config
    from dbtutor.commands.ablate import flat_config
    from dbtutor.core.fileio import write_json, write_text
    from dbtutor.models.model_source import model_fingerprint
    from dbtutor.core.provenance import provenance, shown_path, shown_paths
    settings = {"model": shown_path(model), "model_fingerprint": model_fingerprint(model), "quick": quick,
                "steps": next((r["steps"] for r in rows if "steps" in r), None), "lora_lr": lora_lr,
                "config": shown_paths(flat_config(load_config()))}
    write_json(out / "results.json", {"kind": "lora_vs_full", "rows": rows, "settings": settings,
                                      "seconds": seconds, "provenance": provenance()})
    write_text(out / "results.md", table + "\n")


if __name__ == "__main__":
    main()
