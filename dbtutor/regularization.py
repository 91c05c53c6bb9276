"""Regularization (class) images: generate with the base model until the folder holds exactly num_reg_images."""
from __future__ import annotations

import warnings
from pathlib import Path

from tqdm.auto import tqdm

from .data import list_image_files, load_image
from .errors import DataError
from .fileio import fault_point, remove_stale_temps, save_image
from .pipeline import load_pipeline, sample

PATTERN = "class_{:05d}.png"


def usable_images(folder: str | Path) -> list[Path]:
    """The image files of the folder that open as images (a truncated or empty file does not count)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    good = []
    for p in list_image_files(folder):
        try:
            load_image(p)
            good.append(p)
        except DataError:
            pass
    return good


def count_images(folder: str | Path) -> int:
    """How many usable images the folder holds (NeMo counts files; a broken file counts here as missing)."""
    return len(usable_images(folder))


def missing_indices(folder: Path, num_reg_images: int) -> list[int]:
    """File indices still to generate so that the folder ends with exactly num_reg_images usable images.

    Indices whose file exists and opens are skipped (an unreadable class_i.png is made again); index i is always
    generated from seed (seed, i), so an interrupted run resumes with the very images it would have made."""
    have = {p.name for p in usable_images(folder)}
    need = num_reg_images - len(have)
    idx, i = [], 0
    while len(idx) < need:
        if PATTERN.format(i) not in have:
            idx.append(i)
        i += 1
    return idx


def reg_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def generate_regularization(cfg, pipe=None, rank: int = 0, world_size: int = 1, progress: bool = True,
                            todo: list[int] | None = None) -> list[Path]:
    """NeMo's contract: if `regularization_dir` holds fewer than `num_reg_images` images, generate the rest with
    `regularization_prompt` in batches of `num_images_per_prompt`; otherwise generate nothing.

    Unlike NeMo it never overshoots, and each file is written atomically (temp file + rename). With several
    processes, rank r makes every world_size-th missing index: distinct seeds, distinct names. Pass `todo` =
    missing_indices(...) counted by every rank BEFORE any rank writes, or the ranks would split different lists.
    Returns the paths written by this process."""
    d = cfg.model.data
    folder = Path(d.regularization_dir)
    remove_stale_temps(folder)              # temp files of a killed run (never those of a live process)
    todo = (missing_indices(folder, d.num_reg_images) if todo is None else todo)[rank::world_size]
    if not todo:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    for j in todo:
        if (folder / PATTERN.format(j)).exists():
            warnings.warn(f"{folder / PATTERN.format(j)} is not a usable image: generating it again", stacklevel=2)
    if pipe is None:
        from .pipeline import pick_device
        pipe = load_pipeline(cfg.model.pretrained, device=pick_device(cfg.trainer.device))
    s = cfg.model.sampling
    written = []
    bs = d.num_images_per_prompt
    bar = tqdm(total=len(todo), desc="class images", disable=not progress)
    for i in range(0, len(todo), bs):
        chunk = todo[i:i + bs]
        images = sample(pipe, d.regularization_prompt, [reg_seed(cfg.trainer.seed, j) for j in chunk],
                        num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                        scheduler=s.scheduler, batch_size=bs)
        for j, im in zip(chunk, images):
            path = folder / PATTERN.format(j)
            save_image(im, path)
            written.append(path)
            fault_point("reg")
        bar.update(len(chunk))
    bar.close()
    return written
