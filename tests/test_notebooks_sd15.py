"""All seven notebooks under the sd15 profile, headless, on a small random pipeline with Stable Diffusion v1.5's
block layout (dbtutor.sd15, size "small"), with the learner's own photos (the DreamBooth paper's dog, cropped to
4:3, 16:9 and 9:16 as phone photos are), fp16 sampling on the CPU, and tiny random CLIP/DINOv2 encoders for the
measuring cells. What CI cannot do (a GPU, the real weights) is what this leaves out; every cell runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DOG6, ROOT, save_tiny_encoders

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_env(tmp_path_factory):
    from PIL import Image

    from dbtutor.sd15 import save_random_pipeline
    root = tmp_path_factory.mktemp("sd15_course")
    save_random_pipeline(root / "small-sd15", dtype="fp32", size="small")
    save_tiny_encoders(root / "encoders")
    photos = root / "my_photos"
    photos.mkdir()
    for i, (p, (w, h)) in enumerate(zip(sorted(DOG6.glob("*.jpg")), [(4, 3), (16, 9), (9, 16)])):
        im = Image.open(p).convert("RGB")
        side = min(im.size)
        box = (0, 0, side, side * h // w) if h < w else (0, 0, side * w // h, side)
        im.crop(box).resize((w * 40, h * 40)).save(photos / f"phone_{i}.jpg")
    return {
        "DBTUTOR_PROFILE": "sd15", "DBTUTOR_PRETRAINED": str(root / "small-sd15"),
        "DBTUTOR_NB_WORK": str(root / "work"), "DBTUTOR_NB_SUBJECT_DIR": str(photos), "DBTUTOR_NB_CLASS_NOUN": "dog",
        "DBTUTOR_NB_RESOLUTION": "64", "DBTUTOR_NB_MAX_STEPS": "6", "DBTUTOR_NB_CHECKPOINT_EVERY": "3",
        "DBTUTOR_NB_NUM_REG_IMAGES": "4", "DBTUTOR_NB_SAMPLES_PER_PROMPT": "2", "DBTUTOR_NB_SAMPLER_STEPS": "3",
        "DBTUTOR_NB_SAMPLE_BATCH": "2", "DBTUTOR_NB_DTYPE": "float16",
        "DBTUTOR_CLIP_MODEL": str(root / "encoders" / "clip"), "DBTUTOR_DINO_MODEL": str(root / "encoders" / "dino"),
        "DBTUTOR_SIMULATE_CUDA": "1",        # dbtutor/hooks.py: sampling under float16 autocast, as on a GPU
        "OMP_NUM_THREADS": os.environ.get("DBTUTOR_TEST_THREADS", "2"),
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_under_the_sd15_profile(path: Path, sd15_env, monkeypatch):
    """In course order, sharing one WORK folder, as a learner on Colab with Drive would run them."""
    import nbformat
    from nbclient import NotebookClient
    for k, v in sd15_env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "profile sd15" in text
    for noise in ("requires torchvision", "Loading pipeline components", "Loading weights", "torch_dtype` is deprecated"):
        assert noise not in text, f"{path.name} prints library noise: {noise}"
