"""Image files: finding the usable images of a folder and reading any of them as RGB, one line for each bad one."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR_EXTS = {".json", ".txt", ".md", ".yaml", ".yml", ".csv", ".xmp"}   # notes and captions: ignored quietly
MAX_PIXELS = 120_000_000          # larger images (or decompression bombs) are skipped; 108 MP phone photos pass


class SkippedImageWarning(UserWarning):
    """An unusable file in an image folder was skipped."""


class UnusableImage(DataError):
    """A file that is not a usable image; `.path` and `.reason` say which and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _entries(folder: Path, what: str = "image folder") -> tuple[list[Path], list[str]]:
    """(image-like files, names of other entries worth a warning) directly in `folder`, sorted."""
    from .fileio import _TEMP
    from .locks import LOCK_FILES
    if not folder.is_dir():
        raise DataError(f"{what} {folder} does not exist: create it and put the images there")
    files, ignored = [], []
    for p in sorted(folder.iterdir()):
        if _TEMP.match(p.name) or p.name in LOCK_FILES:          # our own atomic-write temps and folder locks
            continue
        if p.name.startswith("."):
            ignored.append(p.name + ("/" if p.is_dir() else ""))
        elif p.is_dir():
            ignored.append(p.name + "/")
        elif not p.is_file():
            ignored.append(p.name + " (broken link)" if p.is_symlink() else p.name)
        elif p.suffix.lower() in IMAGE_EXTS:
            files.append(p)
        elif p.suffix.lower() not in SIDECAR_EXTS:
            ignored.append(p.name)
    return files, ignored


def list_image_files(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Image-like files directly in `folder`, sorted; hidden files and sub-folders are ignored."""
    return _entries(Path(folder), what)[0]


def load_image(path: str | Path) -> Image.Image:
    """Open any image as RGB with its EXIF orientation applied; raises UnusableImage naming the file if unusable.

    Animated images give their first frame; images above MAX_PIXELS are refused before they are decoded."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnusableImage(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # MAX_PIXELS decides below
            im = Image.open(path)
        with im:
            if im.width * im.height > MAX_PIXELS:
                raise UnusableImage(path, f"too large ({im.width}x{im.height} pixels, limit {MAX_PIXELS:,}): "
                                          "shrink it first")
            im.load()                                  # frame 0; truncated or corrupt data fails here
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise UnusableImage(path, f"too large (decompression bomb check; limit {MAX_PIXELS:,} pixels)") from None
    except Exception as e:                             # any decoder failure means: not a usable image
        if type(e).__name__ == "UnidentifiedImageError":
            raise UnusableImage(path, "not an image Pillow can read") from None
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UnusableImage(path, f"unreadable ({type(e).__name__}{': ' + msg if msg else ''})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited over white, 16-bit is scaled to 8-bit."""
    if im.mode.startswith("I;16"):                     # 16-bit grey: 65535 -> 255
        arr = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "I":                               # 32-bit int: 8- or 16-bit data, judged by its range
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max(initial=0)
        arr = arr if top <= 255 else arr / (257.0 if top <= 65535 else top / 255.0)
        im = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":                               # float: [0, 1] or [0, 255]
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        im = Image.fromarray(np.rint(np.nan_to_num(arr)).clip(0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def scan_images(folder: str | Path, what: str = "instance_dir", min_count: int = 1) -> list[Path]:
    """The usable images of a folder; unreadable files are skipped with a warning naming them.

    Hidden files, sub-folders and files of other types are not read (one warning lists them). Raises one
    DataError, naming the folder and what was wrong with its files, if fewer than `min_count` usable images remain."""
    folder = Path(folder)
    files, ignored = _entries(folder, what)
    good, skipped = [], []
    for p in files:
        try:
            load_image(p)
            good.append(p)
        except UnusableImage as e:
            skipped.append(e)
    if len(good) < min_count:
        found = [f"{e.path.name}: {e.reason}" for e in skipped] + [f"{n}: not read" for n in ignored]
        detail = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise DataError(f"{what} {folder} holds {len(good) or 'no'} usable image{'s' if len(good) > 1 else ''} "
                        f"(need {min_count}){' - ' + detail if detail else ''}; supported: "
                        f"{', '.join(sorted(IMAGE_EXTS))}")
    for e in skipped:
        warnings.warn(f"skipping {e}", SkippedImageWarning, stacklevel=2)
    if ignored:
        warnings.warn(f"{what} {folder}: not reading {', '.join(ignored)} (hidden files, sub-folders and other "
                      "file types are ignored)", SkippedImageWarning, stacklevel=2)
    return good
