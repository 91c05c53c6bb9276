"""The dataset: real photos, EXIF orientation, any mode to RGB, [-1, 1], instance-first batches."""
import numpy as np
import pytest
import torch
from PIL import Image

from dbtutor import DataError, DreamBoothDataset, collate, load_image, preprocess, scan_images
from conftest import DOG6, SUBJECT


def test_real_photos_preprocess_to_range():
    paths = scan_images(DOG6)
    assert len(paths) == 5
    x = preprocess(load_image(paths[0]), 64, center_crop=True)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) < -0.5 and 0.5 < float(x.max()) <= 1.0


def test_center_crop_is_the_middle_and_random_crop_varies():
    im = Image.new("RGB", (96, 32), (255, 0, 0))
    im.paste((0, 0, 255), (32, 0, 64, 32))                 # blue square in the middle
    mid = preprocess(im, 32, center_crop=True)
    assert torch.allclose(mid[2], torch.ones(32, 32)) and torch.allclose(mid[0], -torch.ones(32, 32))
    rng = np.random.default_rng(0)
    crops = {tuple(preprocess(im, 32, center_crop=False, rng=rng)[0, 0, :].tolist()) for _ in range(20)}
    assert len(crops) > 1


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6                                         # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
    im = Image.new(mode, (16, 16))
    im.save(tmp_path / f"x.{ext}")
    out = load_image(tmp_path / f"x.{ext}")
    assert out.mode == "RGB" and out.size == (16, 16)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_files_are_skipped_with_a_named_warning(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    with pytest.warns(UserWarning, match="broken.png"):
        assert [p.name for p in scan_images(tmp_path)] == ["good.png"]


def test_empty_or_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_images(tmp_path / "nope")
    with pytest.raises(DataError, match="no usable image"):
        scan_images(tmp_path)


def test_batches_hold_instance_examples_first_then_prior(tmp_path):
    reg = tmp_path / "reg"
    reg.mkdir()
    for i in range(7):
        Image.new("RGB", (32, 32), (0, 0, 0)).save(reg / f"{i}.png")
    ds = DreamBoothDataset(SUBJECT, "a photo of sks ball", 32, True, reg, "a photo of a ball")
    assert len(ds) == 7                                      # max(5 instance, 7 class)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["prompts"] == ["a photo of sks ball"] * 3 + ["a photo of a ball"] * 3
    inst, prior = torch.chunk(batch["pixel_values"], 2)
    assert torch.all(prior == -1) and not torch.all(inst == -1)
