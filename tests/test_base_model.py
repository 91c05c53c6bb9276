"""The shipped base model: a stock diffusers pipeline, float32, 64x64, small, and its prior follows the prompt."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from dbtutor import load_pipeline, sample
from dbtutor.toyworld.judge import load_judge, predict
from conftest import ROOT

MODEL = ROOT / "data" / "models" / "toyworld"
JUDGE = ROOT / "data" / "models" / "toyworld-judge"


def test_loads_offline_in_stock_diffusers_in_float32(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    for name in ("unet", "vae", "text_encoder"):
        assert all(p.dtype == torch.float32 for p in getattr(pipe, name).parameters()), name
    assert pipe.safety_checker is None
    assert pipe.vae.config.scaling_factor != 0.18215                # its own, measured on the world's latents
    image = pipe("a photo of a red ball", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_weights_are_small_safetensors():
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) < 80e6


def test_text_encoder_keys_are_in_stable_diffusions_layout_which_every_supported_transformers_reads():
    """transformers 5 saves a CLIP text encoder's keys without text_model.; transformers 4 reads only SD's layout."""
    from safetensors import safe_open
    with safe_open(str(MODEL / "text_encoder" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys), \
        "run `dbtutor fix-layout data/models/toyworld`"


PROMPTS = [("red", "ball"), ("blue", "box"), ("yellow", "star"), ("green", "heart")]


@pytest.fixture(scope="module")
def judged():
    pipe = load_pipeline(str(MODEL))
    images = sample(pipe, [f"a photo of a {c} {o}" for c, o in PROMPTS for _ in range(3)], list(range(12)))
    return predict(load_judge(JUDGE), images), [p for p in PROMPTS for _ in range(3)]


@pytest.mark.slow
def test_prior_follows_colour_and_never_shows_a_subject_look(judged):
    pred, truth = judged
    assert sum(c == t[0] for c, t in zip(pred["color"], truth)) >= 9
    assert all(lk == "ordinary" for lk in pred["look"])


@pytest.mark.slow
def test_prior_follows_object(judged):
    pred, truth = judged
    assert sum(o == t[1] for o, t in zip(pred["object"], truth)) >= 10


@pytest.mark.slow
def test_vae_reconstructs_held_out_world_images_and_the_tool_refuses_bad_paths_in_one_line(tmp_path):
    import re
    import subprocess
    import sys
    tool = [sys.executable, str(ROOT / "tools" / "vae_recon.py")]
    out = subprocess.run(tool + [str(MODEL), "--n", "40"], capture_output=True, text=True, check=True).stdout
    assert float(re.search(r"reconstruction MSE ([0-9.]+) on 40 held-out", out).group(1)) < 0.01
    missing = subprocess.run(tool + [str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"{tmp_path / 'nothing'}: no such checkpoint or pipeline folder"
    (tmp_path / "unet.ckpt").write_bytes(b"not a checkpoint")
    wrong = subprocess.run(tool + [str(tmp_path / "unet.ckpt")], capture_output=True, text=True)
    assert wrong.returncode != 0 and wrong.stderr.strip().startswith(
        f"{tmp_path / 'unet.ckpt'}: not a pretrain vae.ckpt or a pipeline folder (")
