"""The DreamBooth dataset: instance images with the instance prompt, class images with the class prompt."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
Image.MAX_IMAGE_PIXELS = 64_000_000          # larger files are refused as decompression bombs


class SkippedImageWarning(UserWarning):
    """An unusable file in an image folder was skipped."""


def list_image_files(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Image-like files directly in `folder`, sorted; hidden files and sub-folders are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} {folder} does not exist: create it and put the images there")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def load_image(path: str | Path) -> Image.Image:
    """Open any image as RGB with its EXIF orientation applied; raises DataError naming the file if unusable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)                               # animated: first frame
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a usable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited over white, 16-bit is scaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = arr / max(arr.max(), 1.0) * 255 if arr.max() > 255 else arr
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def scan_images(folder: str | Path, what: str = "instance_dir", min_count: int = 1) -> list[Path]:
    """The usable images of a folder; unreadable files are skipped with a warning naming them.

    Raises one DataError if fewer than `min_count` usable images remain."""
    good = []
    for p in list_image_files(folder, what):
        try:
            load_image(p)
            good.append(p)
        except DataError as e:
            warnings.warn(f"skipping {e}", SkippedImageWarning, stacklevel=2)
    if len(good) < min_count:
        raise DataError(f"{what} {folder} holds no usable image (need {min_count}; "
                        f"supported: {', '.join(sorted(IMAGE_EXTS))})")
    return good


def preprocess(im: Image.Image, resolution: int, center_crop: bool = True,
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """Resize the short side to `resolution`, crop a square (centre or random), return 3xHxW in [-1, 1]."""
    w, h = im.size
    s = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
    w, h = im.size
    if center_crop:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        rng = rng or np.random.default_rng()
        left, top = int(rng.integers(0, w - resolution + 1)), int(rng.integers(0, h - resolution + 1))
    im = im.crop((left, top, left + resolution, top + resolution))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1.0


class DreamBoothDataset(torch.utils.data.Dataset):
    """Item i: the i-th instance image (cycled) and, with prior preservation, the i-th class image (cycled).

    Its length is the larger of the two counts, as in diffusers' train_dreambooth.py, so that every class
    image is seen once per epoch."""

    def __init__(self, instance_dir, instance_prompt, resolution=64, center_crop=True,
                 regularization_dir=None, regularization_prompt=None, seed=0):
        self.instance_paths = scan_images(instance_dir, "model.data.instance_dir")
        self.instance_prompt = instance_prompt
        self.reg_paths = scan_images(regularization_dir, "model.data.regularization_dir") if regularization_dir else []
        self.regularization_prompt = regularization_prompt
        self.resolution, self.center_crop = resolution, center_crop
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return max(len(self.instance_paths), len(self.reg_paths))

    def _pixels(self, path):
        return preprocess(load_image(path), self.resolution, self.center_crop, self.rng)

    def __getitem__(self, i):
        item = {"instance_pixels": self._pixels(self.instance_paths[i % len(self.instance_paths)]),
                "instance_prompt": self.instance_prompt}
        if self.reg_paths:
            item["reg_pixels"] = self._pixels(self.reg_paths[i % len(self.reg_paths)])
            item["reg_prompt"] = self.regularization_prompt
        return item


def collate(examples: list[dict]) -> dict:
    """Stack a batch with the instance examples first and the prior examples second, so that
    `torch.chunk(model_output, 2)` splits it into (instance, prior) exactly as NeMo's loss does."""
    pixels = [e["instance_pixels"] for e in examples]
    prompts = [e["instance_prompt"] for e in examples]
    if "reg_pixels" in examples[0]:
        pixels += [e["reg_pixels"] for e in examples]
        prompts += [e["reg_prompt"] for e in examples]
    return {"pixel_values": torch.stack(pixels), "prompts": prompts}
