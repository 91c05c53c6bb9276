"""Checks of the command line's own arguments (those outside the config): each refuses a bad value in one line
(ConfigError naming the option) before any work starts. Small pieces, for every command to reuse."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

from .errors import ConfigError

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


def writable_file(path, option: str) -> Path:
    """A file path whose folder exists or can be created and written into (nothing is created here)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give a file name in it, e.g. {path / 'out.png'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: its folder cannot be created, {folder} is a file: choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {folder} is not writable (permission denied or a read-only disk): "
                          "choose another folder")
    return path


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
    from .pipeline import check_pretrained
    return check_pretrained(value, option)
