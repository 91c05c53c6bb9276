"""The latent cache: reused when valid, and only a changed image is encoded again."""
import shutil

import torch
from PIL import Image

from dbtutor import cache_latents, load_pipeline, scan_images
from conftest import SUBJECT


def test_reuse_and_reencode_only_the_changed_image(tmp_path, tiny_pipeline_dir):
    vae = load_pipeline(str(tiny_pipeline_dir)).vae
    src = tmp_path / "imgs"
    shutil.copytree(SUBJECT, src)
    paths = scan_images(src)
    first = cache_latents(paths, tmp_path / "cache", vae, 32)
    assert len(first["encoded"]) == 5 and first["mean"].shape == (5, 4, 16, 16)
    second = cache_latents(paths, tmp_path / "cache", vae, 32)
    assert second["encoded"] == [] and torch.equal(first["mean"], second["mean"])
    Image.open(paths[3]).transpose(Image.FLIP_LEFT_RIGHT).save(paths[3])       # edit one image
    third = cache_latents(paths, tmp_path / "cache", vae, 32)
    assert third["encoded"] == [paths[3]] and len(third["reused"]) == 4
    assert not torch.allclose(third["mean"][3], first["mean"][3])
    assert torch.equal(third["mean"][:3], first["mean"][:3])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 5             # the stale entry is gone
