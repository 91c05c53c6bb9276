"""The paper's prior-preservation ablation (Table 3) on the toy world: train with and without the prior loss, and over
a sweep of prior_loss_weight, for every shipped subject and several seeds; evaluate each run; tabulate mean ± std.

    dbtutor ablate                      # the real one (its table and wall time: docs/results.md)
    dbtutor ablate --quick              # a two-minute end-to-end check of the machinery (its numbers mean nothing)

Resumable: a run whose eval.json exists (made with the same training, steps, base-model weights and evaluation) is
skipped; change a setting or retrain the base model and the run refuses to reuse the folder, so use another --work.
prior_loss_weight 0 is run as "without prior preservation": with weight 0 the prior half of the batch adds nothing
to the gradient (dreambooth_loss), so the two are the same training up to random draws, and "without" costs half
the compute.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ..core.config import ROOT, validate
from ..core.errors import ConfigError, DataError
from ..core.fileio import write_json, write_text
from ..core.provenance import provenance, shown_path, shown_paths
from ..measuring.evaluate import DEFAULT_JUDGE, EVAL_SEED, METRICS, evaluate
from ..models.model_source import model_fingerprint
from ..runs.same_run import changed_keys, flatten, training_config

SUBJECTS_DIR = ROOT / "data" / "subjects"
DEFAULTS = {"seeds": [0, 1, 2], "weights": [0.0, 0.25, 1.0], "num_samples": 4, "class_samples": 32}
QUICK = {"subjects": ["twotone_ball"], "seeds": [0], "weights": [0.0, 1.0], "steps": 30, "num_samples": 2,
         "class_samples": 4, "num_reg_images": 8}
# what a result records of its config (eval.json's run, results.json's settings): all but how the run was driven
NOT_RECORDED = ("trainer.progress", "trainer.checkpoint_every", "trainer.resume", "trainer.keep_checkpoints",
                "trainer.wait_for_lock", "trainer.device", "model.data.num_workers")
# what a finished variant's result depends on besides its training (same_run.training_config): its length, the base
# model's weights (its path may change) and the sampler the evaluation uses
RESULT_KEYS = ("trainer.max_steps", "model.pretrained (weights)", "model.sampling.scheduler",
               "model.sampling.num_inference_steps", "model.sampling.guidance_scale")
SHOWN = ("bind_attr", "bind_scene", "subject_attr", "subject_sim", "prompt_attr", "pres_attr", "class_colors", "pres",
         "div", "div_class")


def shipped_subjects() -> list[str]:
    return sorted(p.parent.name for p in SUBJECTS_DIR.glob("*/subject.json"))


def variant_name(weight: float) -> str:
    return "no_prior" if weight == 0 else f"prior_w{weight:g}"


def variant_config(cfg, subject: str, weight: float, seed: int, steps: int, work: Path, num_reg_images: int):
    """The base config with one run's subject, prior setting, seed and folders filled in."""
    from ..toyworld.subjects import load_subject
    meta = load_subject(SUBJECTS_DIR / subject)
    c = cfg.copy()
    cache = work / "cache" / subject
    for key, value in {"output_dir": str(work / "runs" / subject / variant_name(weight) / f"seed{seed}"),
                       "model.data.instance_dir": str(SUBJECTS_DIR / subject),
                       "model.data.instance_prompt": meta["instance_prompt"],
                       "model.data.regularization_prompt": meta["regularization_prompt"],
                       "model.data.regularization_dir": str(work / "reg" / subject),
                       "model.data.num_reg_images": num_reg_images,
                       "model.data.cached_instance_dir": str(cache / "instance"),
                       "model.data.cached_reg_dir": str(cache / "regularization"),
                       "model.with_prior_preservation": weight > 0, "model.prior_loss_weight": float(weight),
                       "trainer.seed": seed, "trainer.max_steps": steps, "trainer.checkpoint_every": 0,
                       "trainer.progress": False}.items():
        OmegaConf.update(c, key, value)
    validate(c)
    return c


def flat_config(cfg) -> dict:
    """{dotted key: value} of the config as a result records it (NOT_RECORDED left out)."""
    return {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items() if k not in NOT_RECORDED}


def run_record(cfg, eval_settings: dict) -> dict:
    """What eval.json keeps of the run it measured: the config (with the base model's weights) and the evaluation."""
    return {"config": {"model.pretrained (weights)": model_fingerprint(cfg.model.pretrained), **flat_config(cfg)},
            "eval": eval_settings}


def _compared(config: dict) -> dict:
    """The keys of a recorded config that decide reuse: the training (same_run) and RESULT_KEYS."""
    return {**training_config(config), **{k: config.get(k) for k in RESULT_KEYS}}


def check_same(path: Path, record: dict) -> dict:
    """The saved result, if it was made with the same training (same_run.training_config), the same RESULT_KEYS and
    the same evaluation settings; else a ConfigError naming the first difference."""
    saved = json.loads(path.read_text())
    a, b = saved.get("run", {}).get("config", {}), record["config"]
    diff = changed_keys(_compared(a), _compared(b))
    if not diff:
        a, b = saved.get("run", {}).get("eval", {}), record["eval"]
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"{path} was made with {diff[0]}={a.get(diff[0])!r}, now {b.get(diff[0])!r}: "
                          "use another --work folder, or delete that run to redo it")
    return saved


def one_run(cfg, ev: dict, judge_dir, keep_models: bool, base: bool = False) -> dict:
    """Train (unless `base`: the untrained model), evaluate, write eval.json; skipped if it exists."""
    out = Path(cfg.output_dir)
    path = out / "eval.json"
    record = run_record(cfg, ev)
    if path.exists():
        return check_same(path, record)
    t0 = time.time()
    if base:
        from ..models.pipeline import load_pipeline
        pipe, train_s = load_pipeline(cfg.model.pretrained, variant=cfg.model.variant), 0.0
    else:
        from ..train import train
        res = train(cfg)
        pipe, train_s = res.pipe, res.seconds
    d, s = cfg.model.data, cfg.model.sampling
    r = evaluate(pipe, d.instance_dir, backend=ev["backend"], num_samples=ev["num_samples"],
                 class_samples=ev["class_samples"], seed=ev["seed"], num_inference_steps=s.num_inference_steps,
                 guidance_scale=s.guidance_scale, scheduler=s.scheduler, instance_prompt=d.instance_prompt,
                 class_prompt=d.regularization_prompt, judge_dir=judge_dir, grid=out / "eval.png")
    r["run"] = record
    r["train_seconds"], r["run_seconds"] = train_s, time.time() - t0
    write_json(path, r)
    if not keep_models and not base:       # a full pipeline per run adds up; the samples grid stays
        for item in out.iterdir():
            if item.name not in ("eval.json", "eval.png", "history.json", "dreambooth.yaml"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    return r


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarise(results: dict, keys=SHOWN) -> dict:
    """{(subject, variant): [eval, ...]} -> {subject: {variant: {metric: [mean, std, n]}}}, plus 'all subjects'."""
    table: dict = {}
    pooled: dict = {}
    for (subject, variant), runs in results.items():
        table.setdefault(subject, {})[variant] = {}
        for k in keys:
            vals = [r["metrics"][k] for r in runs if k in r["metrics"] and r["metrics"][k] == r["metrics"][k]]  # no NaN
            if vals:
                table[subject][variant][k] = [*mean_std(vals), len(vals)]
                pooled.setdefault(variant, {}).setdefault(k, []).extend(vals)
    if len({s for s, _ in results}) > 1:
        table["all subjects"] = {v: {k: [*mean_std(x), len(x)] for k, x in m.items()} for v, m in pooled.items()}
    return table


def markdown(table: dict, keys=SHOWN) -> str:
    head = "| subject | variant | " + " | ".join(f"{k} {'↑' if METRICS[k][1] == 'higher' else '↓'}" for k in keys)
    lines = [head + " |", "|---|---|" + "---|" * len(keys)]
    for subject, rows in table.items():
        for variant, m in rows.items():
            cells = [f"{m[k][0]:.3f} ± {m[k][1]:.3f}" if k in m else "" for k in keys]
            n = max((m[k][2] for k in m), default=0)
            lines.append(f"| {subject} | {variant} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(table: dict, variants: list[str], path: Path, keys=("bind_attr", "bind_scene", "prompt_attr",
                                                                   "pres_attr", "class_colors", "subject_sim")):
    """One panel per metric: mean ± std over seeds against the variant, a line per subject, the base model dashed."""
    import matplotlib.pyplot as plt
    from ..core.figures import save_figure
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    x = np.arange(len(variants))
    for ax, k in zip(axes.flat, keys):
        for n, (subject, rows) in enumerate(table.items()):
            if subject == "all subjects":
                continue
            ys = [rows.get(v, {}).get(k, [np.nan, 0])[0] for v in variants]
            es = [rows.get(v, {}).get(k, [np.nan, 0])[1] for v in variants]
            line = ax.errorbar(x + 0.04 * n, ys, yerr=es, marker="o", capsize=3, label=subject)
            if "base" in rows and k in rows["base"]:
                ax.axhline(rows["base"][k][0], ls="--", lw=1, color=line[0].get_color())
        ax.set_xticks(x, [v.replace("prior_w", "λ=").replace("no_prior", "no prior") for v in variants])
        ax.set_title(f"{k} ({METRICS[k][1]} is better)", fontsize=9)
        if k.endswith("_attr") or k in ("bind_scene", "class_colors"):      # shares of samples, an entropy in [0, 1]
            ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("prior-preservation ablation (dashed: base model before DreamBooth)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def ablate(cfg, subjects=None, seeds=None, weights=None, steps=None, work=None, judge_dir=None, num_samples=None,
           class_samples=None, num_reg_images=None, quick=False, keep_models=False, eval_seed=EVAL_SEED) -> dict:
    """Run (or resume) the whole ablation; write results.md, results.json and ablation.png into `work`."""
    t0 = time.time()
    q = QUICK if quick else {}
    subjects = subjects or q.get("subjects") or shipped_subjects()
    seeds = seeds if seeds is not None else q.get("seeds", DEFAULTS["seeds"])
    weights = sorted(set(float(w) for w in (weights if weights is not None else q.get("weights", DEFAULTS["weights"]))))
    steps = steps or q.get("steps") or cfg.trainer.max_steps
    num_reg_images = num_reg_images or q.get("num_reg_images") or cfg.model.data.num_reg_images
    work = Path(work or ROOT / "work" / ("ablation-quick" if quick else "ablation"))
    judge_dir = Path(judge_dir or DEFAULT_JUDGE)
    ev = {"backend": "judge", "seed": eval_seed, "judge": str(judge_dir),
          "num_samples": num_samples or q.get("num_samples", DEFAULTS["num_samples"]),
          "class_samples": class_samples or q.get("class_samples", DEFAULTS["class_samples"])}
    for s in subjects:
        if not (SUBJECTS_DIR / s / "subject.json").exists():
            raise ConfigError(f"no subject {s} in {SUBJECTS_DIR}; choose from {', '.join(shipped_subjects())}")
    if not seeds or not weights:
        raise ConfigError("give at least one seed and one prior_loss_weight")
    from ..measuring.evaluate import load_judge_or_fail
    from ..models.pipeline import check_pretrained
    load_judge_or_fail(judge_dir)                      # fail before any training
    check_pretrained(cfg.model.pretrained, variant=cfg.model.variant)
    variants = [variant_name(w) for w in weights]
    total = len(subjects) * (len(seeds) * len(weights) + 1)
    print(f"ablation: {len(subjects)} subjects x {len(seeds)} seeds x {len(weights)} variants ({', '.join(variants)}) "
          f"+ the base model, {steps} steps each, into {work}")
    results, done = {}, 0
    for subject in subjects:
        base_cfg = variant_config(cfg, subject, 0.0, 0, steps, work, num_reg_images)
        base_cfg.output_dir = str(work / "runs" / subject / "base")
        results[(subject, "base")] = [one_run(base_cfg, ev, judge_dir, keep_models, base=True)]
        done += 1
        for w in weights:
            for seed in seeds:
                c = variant_config(cfg, subject, w, seed, steps, work, num_reg_images)
                if w > 0:                               # one class-image set per subject, made with seed 0
                    _regularization(c)
                r = one_run(c, ev, judge_dir, keep_models)
                results.setdefault((subject, variant_name(w)), []).append(r)
                done += 1
                m = r["metrics"]
                print(f"[{done}/{total}] {subject} {variant_name(w)} seed {seed}: bind {m['bind_attr']:.2f} "
                      f"scene {m['bind_scene']:.2f} pres {m['pres_attr']:.2f} colours {m['class_colors']:.2f} ({time.time() - t0:.0f} s so far)", flush=True)
    table = summarise(results)
    seconds = time.time() - t0
    settings = {"subjects": subjects, "seeds": list(seeds), "weights": weights, "steps": steps,
                "num_reg_images": num_reg_images, "quick": bool(quick),
                "eval": {**ev, "judge": shown_path(ev["judge"])}, "pretrained": shown_path(cfg.model.pretrained),
                "config": shown_paths(flat_config(cfg)), "model_fingerprint": model_fingerprint(cfg.model.pretrained),
                "judge_fingerprint": model_fingerprint(judge_dir)}
    md = (markdown(table) + f"\n\n{len(subjects)} subjects x {len(seeds)} seeds, {steps} steps; mean ± std over seeds "
          f"(n runs). Wall time of this invocation: {seconds / 60:.1f} min (runs already done are skipped).\n")
    write_text(work / "results.md", md)
    run_seconds = sum(r.get("run_seconds", 0.0) for runs in results.values() for r in runs)   # resumed runs too
    write_json(work / "results.json", {"kind": "ablation", "table": table, "settings": settings, "seconds": seconds,
                                       "run_seconds": run_seconds, "provenance": provenance()})
    figure(table, variants, work / "ablation.png")
    print(md)
    print(f"wrote {work / 'results.md'}, results.json and ablation.png; wall time {seconds:.0f} s")
    return {"table": table, "settings": settings, "seconds": seconds}


def _regularization(cfg):
    from ..regularization import generate_regularization
    c = cfg.copy()
    c.trainer.seed = 0
    try:
        generate_regularization(c, progress=False)
    except DataError as e:                  # e.g. class images of an earlier base model, or an unreadable record
        raise ConfigError(f"{e}; or use another --work folder") from None
