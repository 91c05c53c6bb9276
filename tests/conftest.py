"""Shared fixtures: a tiny randomly initialised Stable Diffusion pipeline built in the test (no hub access)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "data" / "models" / "toyworld" / "tokenizer"
SUBJECT = ROOT / "data" / "subjects" / "twotone_ball"
DOG6 = ROOT / "data" / "dog6"

torch.set_num_threads(int(os.environ.get("DBTUTOR_TEST_THREADS", "2")))


def load_script(relpath: str):
    """A script of tools/ or bench/ (not part of the package) imported as a module, e.g. "tools/results_tables.py"."""
    import importlib.util
    import sys
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_pipeline(seed: int = 0, prediction_type: str = "epsilon"):
    """A 32x32 Stable Diffusion pipeline with a few thousand parameters per part and the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=8)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407))
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """Folder of a saved tiny pipeline (epsilon prediction), its text encoder in Stable Diffusion's key layout as
    every pipeline dbtutor saves (and as SD's own checkpoints)."""
    from dbtutor.models.pipeline import sd_layout
    path = tmp_path_factory.mktemp("tiny_sd")
    make_tiny_pipeline().save_pretrained(path, safe_serialization=True)
    sd_layout(path)
    return path


@pytest.fixture
def tiny_config(tiny_pipeline_dir, tmp_path):
    """A config for a few seconds of DreamBooth on the tiny pipeline, writing only under tmp_path."""
    from dbtutor import load_config

    def make(**overrides):
        base = {"model.pretrained": str(tiny_pipeline_dir), "output_dir": str(tmp_path / "out"),
                "model.data.instance_dir": str(SUBJECT), "model.data.regularization_dir": str(tmp_path / "reg"),
                "model.data.num_reg_images": 6, "model.data.num_images_per_prompt": 4, "model.data.resolution": 32,
                "model.sampling.num_inference_steps": 2, "trainer.max_steps": 4, "trainer.checkpoint_every": 2,
                "trainer.progress": False}
        base.update(overrides)
        return load_config(overrides=base)
    return make


def save_tiny_encoders(root: Path) -> Path:
    """A tiny random CLIP (with the real tokenizer) in root/clip and DINOv2 in root/dino: the clip back end's
    code path, offline."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=77),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8), projection_dim=8))
        clip.save_pretrained(root / "clip")
        CLIPTokenizer.from_pretrained(TOKENIZER).save_pretrained(root / "clip")
        Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                 image_size=32, patch_size=8)).save_pretrained(root / "dino")
    return root


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    return save_tiny_encoders(tmp_path_factory.mktemp("encoders"))


HUB_COMMIT = "f" * 40


def card_code(run) -> str:
    """The diffusers code of the run's model card, as a user would paste it."""
    text = (Path(run) / "README.md").read_text()
    return re.search(r"## Use it with diffusers\n\n```python\n(.*?)```", text, re.S)[1]


def fake_hub_cache(hf_home: Path, folder: Path, repo: str) -> Path:
    """HF_HOME/hub/models--<org>--<name> with refs/main, blobs/<sha256> and snapshots/<commit>/<file> links to the
    blobs: a complete download of `folder` (a pipeline, an encoder) as snapshot_download leaves it."""
    import hashlib
    entry = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(HUB_COMMIT)
    (entry / "blobs").mkdir()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = entry / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = entry / "snapshots" / HUB_COMMIT / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return entry
