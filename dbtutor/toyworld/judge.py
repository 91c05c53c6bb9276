"""The judge: a small CNN trained on rendered world images that names object, colour, pattern, scene and look."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .world import COLORS, LOOKS, OBJECTS, PATTERNS, SCENES

HEADS = {"object": OBJECTS, "color": list(COLORS), "pattern": PATTERNS, "scene": SCENES, "look": LOOKS}
IGNORE = -100


class Judge(nn.Module):
    """Conv net: 64x64 image in [-1, 1] -> 128-d embedding -> one linear head per attribute."""

    def __init__(self, width: int = 16, dim: int = 128):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                                      block(4 * width, dim), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(dim, len(v)) for k, v in HEADS.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embed(x)
        return {k: h(e) for k, h in self.heads.items()}


def labels_of(attrs) -> dict[str, int]:
    """Class indices for one Attrs; colour and pattern are undefined (ignored) on a subject's look."""
    ordinary = attrs.look == "ordinary"
    return {"object": OBJECTS.index(attrs.object),
            "color": list(COLORS).index(attrs.color) if ordinary else IGNORE,
            "pattern": PATTERNS.index(attrs.pattern) if ordinary else IGNORE,
            "scene": SCENES.index(attrs.scene), "look": LOOKS.index(attrs.look)}


def to_tensor(images) -> torch.Tensor:
    """uint8 NxHxWx3 (array or list of PIL images) -> float Nx3xHxW in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise, so that the judge tolerates a soft VAE decode (it never sees generated images)."""
    sigma = float(torch.rand(1, generator=g)) * 1.2
    if sigma > 0.3:
        k = torch.arange(-2, 3, dtype=torch.float32)
        w = torch.exp(-k ** 2 / (2 * sigma ** 2))
        w = w / w.sum()
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), w.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), w.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    return x + 0.03 * torch.randn(x.shape, generator=g)


@torch.no_grad()
def predict(judge: Judge, images, batch_size: int = 256) -> dict[str, list[str]]:
    """Attribute names for a list of PIL images (or a uint8 array)."""
    judge.eval()
    out = {k: [] for k in HEADS}
    for i in range(0, len(images), batch_size):
        logits = judge(to_tensor(images[i:i + batch_size]))
        for k, v in logits.items():
            out[k] += [HEADS[k][j] for j in v.argmax(1).tolist()]
    return out


@torch.no_grad()
def embed(judge: Judge, images, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised judge embeddings of a list of PIL images, for cosine similarities."""
    judge.eval()
    feats = [judge.embed(to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(feats), dim=1)


def save_judge(judge: Judge, folder: Path, metrics: dict | None = None):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(folder / "judge.safetensors"))
    (folder / "judge.json").write_text(json.dumps({"heads": HEADS, "heldout_accuracy": metrics or {}}, indent=1))


def load_judge(folder: Path) -> Judge:
    folder = Path(folder)
    path = folder / "judge.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train it with `python -m dbtutor.toyworld.train_judge`")
    meta = json.loads((folder / "judge.json").read_text())
    if meta["heads"] != HEADS:
        raise ValueError(f"{folder}: the judge was trained on another vocabulary of the world; retrain it")
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()
