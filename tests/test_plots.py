"""save_grid: Stable Diffusion's 512 px samples keep their resolution; small images keep the usual cell size."""
from __future__ import annotations

import numpy as np
from PIL import Image

from dbtutor.course.plots import save_grid


def drawn_box(path):
    """Width and height of the part of the saved grid that is not white (the image itself, no labels here)."""
    a = np.asarray(Image.open(path).convert("L"))
    ys, xs = np.nonzero(a < 250)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_a_512_px_sample_is_saved_at_full_resolution_and_a_64_px_one_as_before(tmp_path):
    rng = np.random.default_rng(0)
    for side, low, high in ((512, 512, 560), (64, 64, 140)):    # 64 px: the usual 1.2-inch cell
        im = Image.fromarray(rng.integers(0, 200, (side, side, 3), dtype=np.uint8))
        w, h = drawn_box(save_grid([im], tmp_path / f"{side}.png"))
        assert low <= w <= high and low <= h <= high, (side, w, h)
