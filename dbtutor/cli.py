"""The `dbtutor` command line: train, generate-reg, cache, sample; each takes --config FILE and key=value overrides."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .errors import DBTutorError


def _common(p):
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/dreambooth.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.prior_loss_weight=0.5")


def cmd_train(args, cfg):
    from .train import train
    res = train(cfg)
    h = res.history[-1] if res.history else {}
    print(f"trained {len(res.history)} steps in {res.seconds:.0f} s; last instance loss "
          f"{h.get('instance_loss', float('nan')):.4f}, prior loss {h.get('prior_loss', float('nan')):.4f}")
    print(f"saved the pipeline to {res.output_dir}")


def cmd_generate_reg(args, cfg):
    from .regularization import count_images, generate_regularization
    written = generate_regularization(cfg)
    print(f"generated {len(written)} class images; {cfg.model.data.regularization_dir} holds "
          f"{count_images(cfg.model.data.regularization_dir)}")


def cmd_cache(args, cfg):
    from . import cache_subject_latents
    for name, c in cache_subject_latents(cfg).items():
        print(f"{name}: {len(c['encoded'])} encoded, {len(c['reused'])} reused from the cache")


def cmd_sample(args, cfg):
    from .pipeline import load_pipeline, pick_device, sample
    from .plots import save_grid
    src = args.model or (cfg.output_dir if (Path(cfg.output_dir) / "model_index.json").exists() else cfg.model.pretrained)
    pipe = load_pipeline(src, device=pick_device(cfg.trainer.device))
    s = cfg.model.sampling
    prompts = args.prompt or [cfg.model.data.instance_prompt]
    images, labels = [], []
    for p in prompts:
        images += sample(pipe, p, [args.seed + i for i in range(args.num)], s.num_inference_steps, s.guidance_scale,
                         s.scheduler)
        labels.append(p)
    out = Path(args.out)
    save_grid(images, out, rows=len(prompts), row_labels=labels)
    print(f"sampled {len(images)} images from {src} into {out}")


COMMANDS = {"train": cmd_train, "generate-reg": cmd_generate_reg, "cache": cmd_cache, "sample": cmd_sample}


def build_parser():
    ap = argparse.ArgumentParser(prog="dbtutor", description="DreamBooth with prior preservation (NeMo's config keys).")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in [("train", "generate class images if needed, cache latents, train, save the pipeline"),
                        ("generate-reg", "fill model.data.regularization_dir up to num_reg_images"),
                        ("cache", "encode the instance (and class) images into the latent cache"),
                        ("sample", "generate a grid of images from the trained (or base) model")]:
        p = sub.add_parser(name, help=help_)
        _common(p)
        if name == "sample":
            p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: the instance prompt")
            p.add_argument("--num", type=int, default=4, help="images per prompt")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--model", default=None, help="pipeline folder (default: output_dir if trained, else model.pretrained)")
            p.add_argument("--out", default="work/samples.png")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.environ.get("DBTUTOR_DEBUG"):
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from .config import load_config
        cfg = load_config(args.config, args.overrides)
        COMMANDS[args.command](args, cfg)
    except DBTutorError as e:
        print(f"dbtutor: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dbtutor: interrupted; the last checkpoint is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
