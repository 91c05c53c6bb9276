"""Figures saved as files: a labelled grid of images, and any matplotlib figure written atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def image_grid(images, rows: int = 1, row_labels=None, col_labels=None, title=None, scale: float = 1.2):
    """A figure with `images` (PIL or HxWx3 arrays) laid out in `rows` rows, labelled on the left and on top."""
    n = len(images)
    cols = max(1, -(-n // rows))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale + (2.2 if row_labels else 0), rows * scale + 0.5),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if k < n:
            ax.imshow(np.asarray(images[k]))
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for c, label in enumerate(col_labels or []):
        axes[0, c].set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


DPI = 110


def save_figure(fig, path):
    """`fig` written to `path` (its suffix says the format) in one piece, then closed."""
    from .fileio import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def save_grid(images, path, rows=1, row_labels=None, col_labels=None, title=None):
    """image_grid saved to `path`, each cell at least as many pixels wide as its image: Stable Diffusion's 512 px
    samples keep their resolution (at the default scale they would shrink to about 130 px)."""
    widest = max((np.asarray(im).shape[1] for im in images), default=0)
    scale = max(1.2, widest / DPI + 0.3)               # a little more than the image: the margins
    return save_figure(image_grid(images, rows, row_labels, col_labels, title, scale=scale), path)
