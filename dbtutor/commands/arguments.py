"""Checks of the command line's arguments, run before any work: each refuses a bad value in one line (ConfigError
naming the option or key). Small pieces (counts, seeds, files and folders that will be written), then each
command's checks: its own options, and the output folders its config names."""
from __future__ import annotations

import argparse
import io
import math
import os
import tempfile
from pathlib import Path

from ..core.errors import ConfigError

MAX_SEED = 2 ** 63 - 1          # torch.Generator.manual_seed takes seeds up to this (and negative ones, unhelpfully)


def count(value, option: str, minimum: int = 1) -> int:
    """A whole number of things to make, at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option} {value!r}: give a whole number of at least {minimum}")
    return value


def seed(value, option: str, n: int = 1) -> int:
    """A seed that `n` consecutive seeds (value, value + 1, ...) can start from."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED - max(n - 1, 0):
        raise ConfigError(f"{option} {value!r}: a seed is a whole number from 0 to {MAX_SEED - max(n - 1, 0):,}")
    return value


def seeds(values, option: str) -> list[int]:
    """A non-empty list of seeds (e.g. --seeds 0,1,2)."""
    if not values:
        raise ConfigError(f"{option}: give at least one seed, e.g. {option} 0,1,2")
    return [seed(v, option) for v in values]


def number(value, option: str, minimum: float = 0.0) -> float:
    """A finite number, at least `minimum`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x < minimum:
        raise ConfigError(f"{option} {value!r}: give a finite number of at least {minimum:g}")
    return x


def csv_list(kind):
    """argparse type for a comma-separated list (a space-separated one would swallow the key=value overrides)."""
    def parse(text):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from None
    return parse


def writable_file(path, option: str) -> Path:
    """A file path whose folder exists or can be created and written into: the nearest existing folder is tried
    with a hidden file made and removed at once (os.access says yes to root, and to /proc, where nothing can be
    created); nothing is left behind."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give a file name in it, e.g. {path / 'out.png'}")
    _writable_parent(path, option)
    return path


def writable_folder(path, option: str) -> Path:
    """A folder that exists and can be written into, or can be created (tried as writable_file tries)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder: choose another path")
    _writable_parent(path / ".dbtutor-probe", option, shown=path)
    return path


def _writable_parent(path: Path, option: str, shown: Path | None = None) -> None:
    shown = path if shown is None else shown
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {shown}: its folder cannot be created, {folder} is a file: choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dbtutor-probe-", dir=folder)
    except OSError as e:
        why = "permission denied" if isinstance(e, PermissionError) else e.strerror or type(e).__name__
        raise ConfigError(f"{option} {shown}: nothing can be written in {folder} ({why}): choose another "
                          "folder") from None
    os.close(fd)
    os.unlink(probe)


def figure_file(path, option: str) -> Path:
    """writable_file, whose extension is a format matplotlib writes here (what plots.save_figure uses: png, jpg,
    pdf, svg, ...); no extension means png. Tried on a 1-pixel figure in memory, so a format that needs a missing
    program (pgf needs LaTeX) is refused too."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    path = writable_file(path, option)
    fmt = path.suffix.lstrip(".").lower() or "png"
    fig = plt.figure(figsize=(0.1, 0.1))
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            raise ConfigError(f"{option} {path}: .{fmt} is no image format that can be written; use .png, .jpg, "
                              ".webp, .pdf or .svg")
        try:
            fig.savefig(io.BytesIO(), format=fmt)
        except Exception as e:
            raise ConfigError(f"{option} {path}: .{fmt} images cannot be written here ({type(e).__name__}); use .png "
                              "or .jpg") from None
    finally:
        plt.close(fig)
    return path


def image_file(path, option: str) -> Path:
    """writable_file, whose extension is a format Pillow writes an RGB image in (what fileio.save_image uses; no
    extension means png)."""
    from PIL import Image
    path = writable_file(path, option)
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext) if ext else "PNG"
    if fmt not in Image.SAVE:
        raise ConfigError(f"{option} {path}: {ext} is no image format that can be written; use .png, .jpg or .webp")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception as e:
        raise ConfigError(f"{option} {path}: RGB images cannot be written as {fmt} ({type(e).__name__}); use .png "
                          "or .jpg") from None
    return path


def model(value, option: str) -> Path:
    """A pipeline folder or hub id, checked file by file (model_check); the local folder to load."""
    from ..models.pipeline import check_pretrained
    return check_pretrained(value, option)


# ----------------------------------------------------------------------------- per command

def check_sample(args):
    count(args.num, "--num")
    seed(args.seed, "--seed", args.num)
    figure_file(args.out, "--out")


def check_eval(args):
    count(args.num_samples, "--num-samples", 2)
    count(args.class_samples, "--class-samples", 2)
    seed(args.seed, "--seed", max(args.num_samples, args.class_samples))
    if args.out is not None:
        writable_file(args.out, "--out")
    if args.model is not None:
        model(args.model, "--model")


def check_ablate(args):
    for option, value, least in (("--steps", args.steps, 1), ("--num-samples", args.num_samples, 2),
                                 ("--class-samples", args.class_samples, 2), ("--num-reg-images", args.num_reg_images, 1)):
        if value is not None:
            count(value, option, least)
    if args.seeds is not None:
        seeds(args.seeds, "--seeds")
    if args.weights is not None:
        if not args.weights:
            raise ConfigError("--weights: give at least one prior_loss_weight, e.g. --weights 0,0.25,1")
        for w in args.weights:
            number(w, "--weights")
    if args.subjects is not None and not args.subjects:
        raise ConfigError("--subjects: give at least one subject folder of data/subjects")
    if args.work is not None:
        writable_folder(args.work, "--work")


def check_export(args):
    writable_file(args.out, "--out")


def check_fix_layout(args):
    if Path(args.folder).is_dir():              # rewritten in place; a missing folder: sd_layout says what to give
        writable_folder(args.folder, "fix-layout")


def check_outputs(command: str, args, cfg) -> None:
    """The folders the config names that the command writes: each writable or creatable, before any work (one
    line naming the key). A complete class-image folder is only read, so it may be read-only."""
    d, folders = cfg.model.data, []
    if command == "train":
        folders.append((cfg.output_dir, "output_dir"))
    if command in ("train", "generate-reg") and cfg.model.with_prior_preservation:
        reg = Path(d.regularization_dir)
        if not reg.is_dir() or sum(1 for _ in reg.glob("*.png")) < d.num_reg_images:
            folders.append((reg, "model.data.regularization_dir"))
    if command in ("train", "cache") and cfg.model.use_cached_latents:
        from ..core.config import cached_dirs
        inst, reg = cached_dirs(cfg)
        folders += [(inst, "model.data.cached_instance_dir" if d.cached_instance_dir else "output_dir")]
        if cfg.model.with_prior_preservation:
            folders += [(reg, "model.data.cached_reg_dir" if d.cached_reg_dir else "output_dir")]
    for folder, key in folders:
        writable_folder(folder, key)
    if command == "eval" and args.out is None:
        writable_file(Path(cfg.output_dir) / "eval.json", "output_dir")


CHECKS = {"sample": check_sample, "eval": check_eval, "ablate": check_ablate, "export": check_export,
          "fix-layout": check_fix_layout}   # each command's arguments outside the config, checked before it loads one
