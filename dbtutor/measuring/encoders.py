"""CLIP and DINOv2 encoders for measuring samples, each loaded (and fetched from the Hub) only when first used.

`dbtutor eval` uses both (CLIP-I, CLIP-T, DINO); the notebooks and the validations measure with DINOv2-small alone,
so CLIP ViT-B/32 (about 605 MB) is never fetched for them. DBTUTOR_CLIP_MODEL / DBTUTOR_DINO_MODEL name other
models (a hub id or a local folder) for the notebooks and the validations, e.g. tiny ones in tests.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.errors import ConfigError

CLIP_MODEL = "openai/clip-vit-base-patch32"
DINO_MODEL = "facebook/dinov2-small"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINDS = ("clip", "dino")


def model_names() -> dict:
    """{'clip': ..., 'dino': ...}: the measuring models of the notebooks and validations (DBTUTOR_CLIP_MODEL,
    DBTUTOR_DINO_MODEL, else CLIP ViT-B/32 and DINOv2-small from the Hub)."""
    return {"clip": os.environ.get("DBTUTOR_CLIP_MODEL") or CLIP_MODEL,
            "dino": os.environ.get("DBTUTOR_DINO_MODEL") or DINO_MODEL}


def to_pixels(images, size: int, resize: int, mean, std) -> torch.Tensor:
    """Resize the short side to `resize` (bicubic), centre-crop `size`, scale to [0, 1] and normalise: what the
    CLIP and DINOv2 image processors do, without torchvision."""
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        s = resize / min(w, h)
        w, h = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        out.append(np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _features(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output     # transformers 5 returns a model output


class Encoders:
    """CLIP (image and text) and DINOv2 (image) encoders, from the Hub or local folders; no remote code.

    Each model is loaded the first time it is used, or at once for those named in `load` (a missing one is then a
    one-line ConfigError before any work: `dbtutor eval` loads both). local_files_only: only what is on this machine,
    never a download."""

    def __init__(self, clip_model: str = CLIP_MODEL, dino_model: str = DINO_MODEL, device="cpu",
                 local_files_only: bool = False, load=KINDS):
        self.device, self.local_files_only = torch.device(device), local_files_only
        self.names, self._models = {"clip": str(clip_model), "dino": str(dino_model)}, {}
        for kind in load:
            self.model(kind)

    def model(self, kind: str):
        """The CLIP or DINOv2 model ("clip" or "dino"), loaded now if it was not yet."""
        if kind not in self._models:
            from transformers import CLIPModel, CLIPTokenizer, Dinov2Model
            name, local = self.names[kind], {"local_files_only": self.local_files_only}
            try:
                if kind == "clip":
                    self.tokenizer = CLIPTokenizer.from_pretrained(name, **local)
                model = (CLIPModel if kind == "clip" else Dinov2Model).from_pretrained(name, **local)
            except Exception as e:          # not found, offline, or a damaged folder or download
                what = "CLIPModel" if kind == "clip" else "Dinov2Model"
                raise ConfigError(f"cannot load the {'CLIP' if kind == 'clip' else 'DINOv2'} model {name} "
                                  f"({type(e).__name__}): pass a local folder of a complete transformers {what} with "
                                  f"--{kind}-model") from None
            self._models[kind] = model.to(self.device).eval()
        return self._models[kind]

    def available(self, kind: str) -> bool:
        """Whether the model loads (from this machine only, with local_files_only)."""
        try:
            self.model(kind)
            return True
        except ConfigError:
            return False

    @property
    def clip(self):
        return self.model("clip")

    @property
    def dino(self):
        return self.model("dino")

    @property
    def clip_size(self) -> int:
        return self.clip.config.vision_config.image_size

    @property
    def dino_size(self) -> int:
        return min(224, self.dino.config.image_size)

    @torch.no_grad()
    def clip_images(self, images, batch_size: int = 32) -> torch.Tensor:
        feats, size = [], self.clip_size
        for i in range(0, len(images), batch_size):
            x = to_pixels(images[i:i + batch_size], size, size, CLIP_MEAN, CLIP_STD)
            feats.append(_features(self.clip.get_image_features(pixel_values=x.to(self.device))))
        return F.normalize(torch.cat(feats).float().cpu(), dim=1)

    @torch.no_grad()
    def clip_texts(self, texts: list[str]) -> torch.Tensor:
        clip = self.clip
        t = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return F.normalize(_features(clip.get_text_features(**t)).float().cpu(), dim=1)

    @torch.no_grad()
    def dino_images(self, images, batch_size: int = 32) -> torch.Tensor:
        """The CLS token after the final layer norm (the paper's DINO embedding)."""
        feats, size = [], self.dino_size
        for i in range(0, len(images), batch_size):
            x = to_pixels(images[i:i + batch_size], size, round(size * 256 / 224), IMAGENET_MEAN, IMAGENET_STD)
            feats.append(self.dino(pixel_values=x.to(self.device)).pooler_output)
        return F.normalize(torch.cat(feats).float().cpu(), dim=1)


def fetch_dino() -> str | None:
    """Bring the measuring model (DINOv2: model_names()) onto this machine now, from the Hub if it is not there yet,
    so that validations, which never download, can score from step 0. None when it is there, else why not."""
    name = model_names()["dino"]
    if name not in _FETCHED:
        try:
            Encoders(dino_model=name, load=("dino",))
        except ConfigError as e:
            return str(e).split(": pass a local folder")[0]
        _FETCHED.add(name)
    return None


_FETCHED: set = set()       # the DINOv2 models this process has brought onto the machine already
