"""The `dbtutor` command line: train, generate-reg, cache, sample, eval, ablate (--config FILE, key=value overrides), fix-layout,
export, push."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..core.errors import DBTutorError
from . import arguments as A


class _Parser(argparse.ArgumentParser):
    """argparse, its errors in dbtutor's one line (its own are two or more: the usage, then the error)."""

    def error(self, message):
        where = f"{self.prog}: " if self.prog != "dbtutor" else ""
        _say(f"dbtutor: error: {where}{message} (see {self.prog} --help)")
        sys.exit(2)


EXAMPLES = {"train": "model.prior_loss_weight=0.5 trainer.max_steps=200",   # each command's override example:
            "generate-reg": "model.data.num_reg_images=50",                    # keys it reads
            "cache": "model.data.resolution=128",
            "sample": "model.sampling.num_inference_steps=30 model.sampling.scheduler=ddim",
            "eval": "output_dir=work/runs/another_run",
            "ablate": "model.data.num_reg_images=100"}


def _common(p, command: str):
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/dreambooth.yaml)")
    p.add_argument("overrides", nargs="*", help=f"config keys as key=value, e.g. {EXAMPLES[command]} (every key: "
                                                "docs/configuration.md)")


def cmd_train(args, cfg):
    from ..train import train
    res = train(cfg)
    if os.environ.get("RANK", "0") != "0":      # under accelerate launch / torchrun: one report, from rank 0
        return
    if not res.saved:                           # train() said so: nothing to train
        return
    h, t = (res.history[-1] if res.history else {}), res.times
    steps = len(res.history) - res.start
    which = f" ({res.start + 1} to {len(res.history)}; the first {res.start} before)" if res.start else ""
    print(f"trained {steps} steps{which} in {_duration(t['training'])}; last instance loss "
          f"{h.get('instance_loss', float('nan')):.4f}, prior loss {h.get('prior_loss', float('nan')):.4f}")
    rest = res.seconds - sum(t.values())
    print(f"time: class images {_duration(t['class_images'])}, latent cache {_duration(t['latent_cache'])}, training "
          f"{_duration(t['training'])}, saving {_duration(t['saving'])}, loading and the rest {_duration(rest)}; "
          f"{_duration(res.seconds)} in all")
    print(f"saved the pipeline to {res.output_dir}")
    strip = Path(res.output_dir) / "validation" / "strip.png"
    if cfg.trainer.validation.every and strip.exists():
        print(f"samples along the way (trainer.validation): {strip}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 59.5 else f"{int(seconds + 0.5) // 60} min {int(seconds + 0.5) % 60} s"


def cmd_generate_reg(args, cfg):
    from ..regularization import count_images, generate_regularization
    written = generate_regularization(cfg)
    print(f"generated {len(written)} class images; {cfg.model.data.regularization_dir} holds "
          f"{count_images(cfg.model.data.regularization_dir)}")


def cmd_cache(args, cfg):
    from .. import cache_subject_latents
    for name, c in cache_subject_latents(cfg).items():
        print(f"{name}: {len(c['encoded'])} encoded, {len(c['reused'])} reused from the cache")



def cmd_sample(args, cfg):
    from ..models.pipeline import check_pretrained, is_run, load_trained, pick_device, sample, sampling_dtype
    from ..core.figures import save_grid
    trained = is_run(cfg.output_dir)
    src = args.model or (cfg.output_dir if trained else cfg.model.pretrained)
    if (Path(src) / "model_index.json").exists() or not is_run(src):
        check_pretrained(src, "--model" if args.model else "output_dir" if trained else "model.pretrained", cfg.model.variant)
    device = pick_device(cfg.trainer.device)
    pipe = load_trained(src, device=device, dtype=sampling_dtype(device), variant=cfg.model.variant)
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



def cmd_eval(args, cfg):
    from .eval_command import eval_command
    eval_command(cfg, model=args.model, backend=args.backend, num_samples=args.num_samples,
                 class_samples=args.class_samples, seed=args.seed, judge_dir=args.judge, clip_model=args.clip_model,
                 dino_model=args.dino_model, out=args.out)
    from ..sharing.card import refresh_card                 # the model card shows the numbers of this very run
    try:
        card = refresh_card(args.model or cfg.output_dir)
    except OSError as e:                           # a read-only run folder: measured all the same
        warnings.warn(f"the model card of {args.model or cfg.output_dir} was not updated ({e.strerror or e})")
        return
    if card:
        print(f"updated the model card {card}")



def cmd_ablate(args, cfg):
    from .ablate import ablate
    ablate(cfg, subjects=args.subjects, seeds=args.seeds, weights=args.weights, steps=args.steps, work=args.work,
           judge_dir=args.judge, num_samples=args.num_samples, class_samples=args.class_samples,
           num_reg_images=args.num_reg_images, quick=args.quick, keep_models=args.keep_models)


def cmd_fix_layout(args, cfg):
    from ..models.model_check import check_model
    from ..models.pipeline import sd_layout
    if (Path(args.folder) / "model_index.json").exists():       # the parts it rewrites must be sound first
        check_model(args.folder, "fix-layout", parts=("text_encoder", "tokenizer"))
    changed = sd_layout(args.folder)
    print(f"{args.folder}: " + (f"{' and '.join(changed)} rewritten in" if changed else "already in")
          + " Stable Diffusion's layout, which every supported transformers reads")





def cmd_export(args, cfg):
    from ..sharing.export import export
    res = export(args.run, args.out, half=args.half, merged=args.merged)
    what = "a kohya-format LoRA" if res["kind"] == "lora" else "a Stable Diffusion checkpoint"
    print(f"wrote {res['path']}: {what}, {res['tensors']} tensors, {res['bytes'] / 1e6:.1f} MB")


def cmd_push(args, cfg):
    from ..sharing.push import push
    res = push(args.run, args.repo_id, private=args.private, dry_run=args.dry_run)
    total = sum(size for _, size in res["files"])
    if args.dry_run:
        print(f"would upload {len(res['files'])} files ({total / 1e6:.1f} MB) to {res['repo_id']}:")
        for name, size in res["files"]:
            print(f"  {size:>12,}  {name}")
    else:
        print(f"uploaded {len(res['files'])} files ({total / 1e6:.1f} MB) to {res['url']}")


COMMANDS = {"train": cmd_train, "generate-reg": cmd_generate_reg, "cache": cmd_cache, "sample": cmd_sample,
            "eval": cmd_eval, "ablate": cmd_ablate, "fix-layout": cmd_fix_layout, "export": cmd_export,
            "push": cmd_push}


def launch_commands(args: list[str], gpus: int = 8, machines: int = 2, main_ip: str = "10.0.0.1",
                    port: int = 29500) -> dict[str, str]:
    """The shell commands that run `dbtutor <args>` in one process, on several GPUs, on several machines
    (run on each, changing --machine_rank), and as 2 CPU processes (gloo). --num_processes is the total."""
    import shlex
    tail = "-m dbtutor " + " ".join(shlex.quote(a) for a in args)
    return {
        "one process": "dbtutor " + " ".join(shlex.quote(a) for a in args),
        f"one machine, {gpus} GPUs": f"accelerate launch --multi_gpu --num_processes {gpus} {tail}",
        f"{machines} machines x {gpus} GPUs (machine 0; the others: --machine_rank 1, 2, ...)":
            f"accelerate launch --multi_gpu --num_machines {machines} --num_processes {machines * gpus} "
            f"--machine_rank 0 --main_process_ip {main_ip} --main_process_port {port} {tail}",
        "2 processes on a CPU (gloo; --cpu would start only one)":
            "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
            f"--dynamo_backend no {tail}",
    }


def build_parser():
    ap = _Parser(prog="dbtutor", description="DreamBooth with prior preservation (NeMo's config keys).",
                 epilog="dbtutor COMMAND --help lists a command's options.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in [("train", "generate class images if needed, cache latents, train, save the pipeline"),
                        ("generate-reg", "fill model.data.regularization_dir up to num_reg_images"),
                        ("cache", "encode the instance (and class) images into the latent cache"),
                        ("sample", "generate a grid of images from the trained (or base) model"),
                        ("eval", "measure subject fidelity, prompt fidelity, PRES and DIV of the trained model"),
                        ("ablate", "the paper's prior-preservation ablation: train and evaluate with/without, "
                                   "over prior_loss_weight, subjects and seeds"),
                        ("fix-layout", "rewrite a pipeline folder saved by transformers 5 in Stable Diffusion's "
                                       "layout, which transformers 4 reads too (text encoder keys, tokenizer files)"),
                        ("export", "write a run as one .safetensors file for AUTOMATIC1111's web UI and ComfyUI: a "
                                   "Stable Diffusion checkpoint, or a kohya-format LoRA for a LoRA run"),
                        ("push", "upload a run (weights, model card, samples) to the Hugging Face Hub")]:
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        if name in ("export", "push"):
            p.add_argument("run", type=Path, help="a trained run's folder (its output_dir)")
            if name == "export":
                p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. sks_dog.safetensors")
                p.add_argument("--half", action="store_true", help="store the weights in fp16 (half the size)")
                p.add_argument("--merged", action="store_true",
                               help="a LoRA run: its merged pipeline as a checkpoint instead of the LoRA file")
            else:
                p.add_argument("--repo-id", required=True, help="the Hub model repo, NAME or USER/NAME")
                p.add_argument("--private", action="store_true", help="create the repo private")
                p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
            continue
        if name == "fix-layout":
            p.add_argument("folder", type=Path, help="a diffusers pipeline folder, e.g. data/models/toyworld")
            continue
        _common(p, name)
        if name == "sample":
            p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: the instance prompt")
            p.add_argument("--num", type=int, default=4, help="images per prompt (default: %(default)s)")
            p.add_argument("--seed", type=int, default=0,
                           help="the first seed: image i of every prompt uses seed + i (default: %(default)s)")
            p.add_argument("--model", default=None, help="pipeline folder (default: output_dir if trained, else model.pretrained)")
            p.add_argument("--out", default="work/samples.png",
                           help="the grid to write: .png, .jpg, .pdf, .svg, ... (default: %(default)s)")
        if name == "eval":
            from ..measuring.evaluate import CLIP_MODEL, DINO_MODEL, EVAL_SEED
            p.add_argument("--model", default=None, help="pipeline folder (default: output_dir)")
            p.add_argument("--backend", choices=("auto", "judge", "clip"), default="auto",
                           help="judge (toy-world subjects) or clip (CLIP + DINOv2); auto (the default) picks by "
                                "subject.json")
            p.add_argument("--num-samples", type=int, default=4, help="samples per subject prompt (default: %(default)s)")
            p.add_argument("--class-samples", type=int, default=32, help="samples of the bare class prompt (PRES; default: %(default)s)")
            p.add_argument("--seed", type=int, default=EVAL_SEED, help="first sampling seed (default: %(default)s)")
            p.add_argument("--judge", default=None, help="judge folder (default: data/models/toyworld-judge)")
            p.add_argument("--clip-model", default=CLIP_MODEL, help="CLIPModel hub id or folder (backend clip; default: %(default)s)")
            p.add_argument("--dino-model", default=DINO_MODEL, help="Dinov2Model hub id or folder (backend clip; default: %(default)s)")
            p.add_argument("--out", default=None, help="JSON file (default: output_dir/eval.json)")
        if name == "ablate":
            p.add_argument("--quick", action="store_true", help="one subject, one seed, 30 steps: checks the machinery")
            p.add_argument("--subjects", type=A.csv_list(str), default=None,
                           help="comma-separated subject folders of data/subjects (default: all)")
            p.add_argument("--seeds", type=A.csv_list(int), default=None, help="training seeds, e.g. 0,1,2 (the default)")
            p.add_argument("--weights", type=A.csv_list(float), default=None,
                           help="prior_loss_weight values; 0 = without prior preservation (default: 0,0.25,1)")
            p.add_argument("--steps", type=int, default=None, help="training steps per run (default: trainer.max_steps)")
            p.add_argument("--num-samples", type=int, default=None, help="samples per subject prompt (default 4)")
            p.add_argument("--class-samples", type=int, default=None, help="samples of the class prompt (default 32)")
            p.add_argument("--num-reg-images", type=int, default=None, help="class images (default: config's)")
            p.add_argument("--judge", default=None, help="judge folder (default: data/models/toyworld-judge)")
            p.add_argument("--work", default=None, help="work folder (default: work/ablation, or work/ablation-quick)")
            p.add_argument("--keep-models", action="store_true", help="keep each run's trained pipeline")
    return ap


def _quiet(command: str):
    """Warnings as one line each, no library chatter (loading bars, advisories); DBTUTOR_DEBUG=1 shows it all."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = lambda message, *a, **k: _say(f"dbtutor: warning: {message}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if command in ("train", "generate-reg", "cache", "sample"):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
        for log in (diffusers_logging, transformers_logging):     # also when imported before (in a notebook)
            log.set_verbosity_error()
            log.disable_progress_bar()


def _say(line: str):
    """One line to stderr in one write: processes launched together share stderr, and print's two writes (text,
    then newline) can interleave with another process's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.environ.get("DBTUTOR_DEBUG"):
        _quiet(args.command)
    try:
        if args.command in A.CHECKS:
            A.CHECKS[args.command](args)
        from ..core.config import load_config
        cfg = load_config(args.config, args.overrides) if hasattr(args, "overrides") else None
        if cfg is not None:
            A.check_outputs(args.command, args, cfg)
        COMMANDS[args.command](args, cfg)
    except DBTutorError as e:
        _say(f"dbtutor: error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("dbtutor: interrupted; the finished steps are in the last checkpoint, rerun the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
