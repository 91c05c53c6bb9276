"""The DreamBooth dataset: instance images with the instance prompt, class images with the class prompt."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .core.images import (IMAGE_EXTS, SkippedImageWarning, UnusableImage, list_image_files, load_image,  # noqa: F401
                          scan_images, to_rgb)  # (the files of a folder: dbtutor.core.images)


def preprocess(im: Image.Image, resolution: int, center_crop: bool = True,
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """Crop the largest square (centre or random), resize it to `resolution`, return 3xHxW in [-1, 1].

    The same as resizing the short side to `resolution` and then cropping, but only the square is resampled,
    so a very long and thin image cannot blow up memory."""
    w, h = im.size
    side = min(w, h)
    if center_crop:
        left, top = (w - side) // 2, (h - side) // 2
    else:
        rng = rng or np.random.default_rng()
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    im = im.resize((resolution, resolution), Image.BICUBIC, box=(left, top, left + side, top + side))
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
