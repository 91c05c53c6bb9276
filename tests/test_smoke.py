"""The whole chain on the tiny pipeline, through the Python API."""
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

import dbtutor


@pytest.mark.slow
@pytest.mark.versions
def test_train_chain_api(tiny_config):
    cfg = tiny_config()
    res = dbtutor.train(cfg)
    assert len(res.history) == 4
    assert len(list(Path(cfg.model.data.regularization_dir).glob("*.png"))) == 6
    pipe = StableDiffusionPipeline.from_pretrained(res.output_dir)
    im = pipe("a photo of sks ball", num_inference_steps=2, output_type="np").images
    assert im.shape == (1, 32, 32, 3)
