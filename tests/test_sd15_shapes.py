"""Stable Diffusion v1.5 at full size, on the meta device (no memory, no compute): counts, shapes, tokenizer."""
from __future__ import annotations

import pytest
import torch

from dbtutor.latent_cache import latent_shape
from dbtutor.models.sd15 import MAX_TOKENS, PUBLISHED_PARAMS, build_models, load_tokenizer, parameter_counts


@pytest.fixture(scope="module")
def meta_models():
    return build_models("meta")


def test_parameter_counts_are_the_published_ones(meta_models):
    assert next(meta_models["unet"].parameters()).device.type == "meta"
    counts = parameter_counts(meta_models)
    for name, published in PUBLISHED_PARAMS.items():
        assert abs(counts[name] - published) <= 0.01 * published, (name, counts[name], published)


def test_the_cache_and_the_unet_see_64x64x4_latents_at_512_px(meta_models):
    vae, unet, te = meta_models["vae"], meta_models["unet"], meta_models["text_encoder"]
    assert latent_shape(vae, 512) == (4, 64, 64)           # what cache_latents stores per image
    post = vae.encode(torch.empty(1, 3, 512, 512, device="meta")).latent_dist
    assert tuple(post.mean.shape) == tuple(post.logvar.shape) == (1, 4, 64, 64)
    assert vae.config.scaling_factor == 0.18215
    ids = torch.zeros(2, MAX_TOKENS, dtype=torch.long, device="meta")
    states = te(ids)[0]
    assert tuple(states.shape) == (2, 77, 768) == (2, MAX_TOKENS, unet.config.cross_attention_dim)
    out = unet(torch.empty(2, 4, 64, 64, device="meta"), torch.tensor([1, 999], device="meta"), states).sample
    assert tuple(out.shape) == (2, 4, 64, 64)
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512   # the pipeline's image size


def test_the_shipped_clip_tokenizer_gets_sds_77_tokens():
    tok = load_tokenizer()
    ids = tok(["a photo of sks dog"], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert tok.model_max_length == MAX_TOKENS and len(ids[0]) == 77
    assert ids[0][:2] == [49406, 320] and tok.convert_tokens_to_ids("sks</w>") == 48136


@pytest.mark.slow
@pytest.mark.versions
def test_the_small_pipeline_has_sds_layout_and_loads(tmp_path):
    """The narrow copy: the same weight names as SD v1.5 (layer for layer where the depth is the same), an 8x VAE,
    and a folder load_pipeline accepts and samples from at 64 px."""
    from dbtutor.models.pipeline import load_pipeline, sample
    from dbtutor.models.sd15 import save_random_pipeline
    full, small = build_models("meta"), build_models("meta", size="small")
    for part in ("unet", "vae"):
        assert set(small[part].state_dict()) == set(full[part].state_dict()), part
    layers = {k for k in full["text_encoder"].state_dict() if ".layers." not in k or ".layers.0." in k
              or ".layers.1." in k}
    assert set(small["text_encoder"].state_dict()) == layers
    counts = save_random_pipeline(tmp_path / "small", dtype="fp32", size="small")
    assert counts["unet"] < 5_000_000
    pipe = load_pipeline(tmp_path / "small")
    assert latent_shape(pipe.vae, 64) == (4, 8, 8)
    images = sample(pipe, "a photo of sks dog", [0, 1], num_inference_steps=2)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
