"""Regularization (class) images: generate with the base model until the folder holds exactly num_reg_images."""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from .data import list_image_files
from .fileio import save_image
from .pipeline import load_pipeline, sample

PATTERN = "class_{:05d}.png"


def count_images(folder: str | Path) -> int:
    """How many image files the folder holds (NeMo's criterion); a missing folder holds none."""
    return len(list_image_files(folder)) if Path(folder).is_dir() else 0


def missing_indices(folder: Path, num_reg_images: int) -> list[int]:
    """File indices still to generate so that the folder ends with exactly num_reg_images images.

    Indices whose file already exists are skipped; index i is always generated from seed (seed, i), so an
    interrupted run resumes with the very images it would have made."""
    need = num_reg_images - count_images(folder)
    idx, i = [], 0
    while len(idx) < need:
        if not (folder / PATTERN.format(i)).exists():
            idx.append(i)
        i += 1
    return idx


def reg_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def generate_regularization(cfg, pipe=None, rank: int = 0, world_size: int = 1, progress: bool = True) -> list[Path]:
    """NeMo's contract: if `regularization_dir` holds fewer than `num_reg_images` images, generate the rest with
    `regularization_prompt` in batches of `num_images_per_prompt`; otherwise generate nothing.

    Unlike NeMo it never overshoots, and each file is written atomically (temp file + rename). With several
    processes, rank r makes the indices i with i % world_size == r: distinct seeds, distinct names.
    Returns the paths written by this process."""
    d = cfg.model.data
    folder = Path(d.regularization_dir)
    todo = missing_indices(folder, d.num_reg_images)[rank::world_size]
    if not todo:
        return []
    folder.mkdir(parents=True, exist_ok=True)
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
        bar.update(len(chunk))
    bar.close()
    return written
