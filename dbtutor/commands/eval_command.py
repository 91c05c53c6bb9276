"""`dbtutor eval`: measure a trained run (or any model) on its subject, print the table, keep the result beside it."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from ..measuring.encoders import CLIP_MODEL, DINO_MODEL
from ..measuring.evaluate import DEFAULT_JUDGE, EVAL_SEED, evaluate, format_table


def eval_command(cfg, model=None, backend: str = "auto", num_samples: int = 4, class_samples: int = 32,
                 seed: int = EVAL_SEED, judge_dir=None, clip_model=CLIP_MODEL, dino_model=DINO_MODEL, out=None) -> dict:
    """`dbtutor eval`: evaluate the trained output_dir (or `model`) on model.data.instance_dir; print a table,
    write the result to output_dir/eval.json (atomically) and the samples to eval.png next to it."""
    from ..core.fileio import write_json
    from ..models.pipeline import pick_device
    d, s = cfg.model.data, cfg.model.sampling
    if model is None:
        from ..models.pipeline import check_pretrained, is_run
        model = cfg.output_dir
        if not is_run(model):
            raise ConfigError(f"output_dir={model} holds no trained pipeline: run `dbtutor train` first, or pass --model")
        if (Path(model) / "model_index.json").exists():
            check_pretrained(model, "output_dir")      # a damaged saved pipeline: one line, before any work
    if backend == "auto":
        backend = "judge" if (Path(d.instance_dir) / "subject.json").exists() else "clip"
    out = Path(out) if out else Path(cfg.output_dir) / "eval.json"
    res = evaluate(model, d.instance_dir, backend=backend, num_samples=num_samples, class_samples=class_samples,
                   seed=seed, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                   scheduler=s.scheduler, instance_prompt=d.instance_prompt, class_prompt=d.regularization_prompt,
                   judge_dir=judge_dir or DEFAULT_JUDGE, clip_model=clip_model, dino_model=dino_model,
                   device=pick_device(cfg.trainer.device), grid=out.with_suffix(".png"))
    print(f"{model} on {d.instance_dir} ({backend}, {num_samples} samples per prompt, "
          f"{class_samples} of '{d.regularization_prompt}', {res['seconds']:.0f} s)")
    print(format_table(res["metrics"]))
    from ..sharing.card import run_stamp
    res["run"] = run_stamp(model)                   # which saved run this measured (the model card checks it)
    write_json(out, res)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return res
