"""The latent cache manifest: every kind of change is noticed, only what changed is encoded, damage is rebuilt."""
import os
import shutil
import warnings

import pytest
import torch
from PIL import Image

from dbtutor import cache_latents, load_pipeline, scan_images
from dbtutor.latent_cache import MANIFEST
from conftest import DOG6, SUBJECT, make_tiny_pipeline


@pytest.fixture(scope="module")
def vae(tiny_pipeline_dir):
    return load_pipeline(str(tiny_pipeline_dir)).vae


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "imgs"
    shutil.copytree(SUBJECT, src)
    return src


def run(folder, cache, vae, resolution=32, center_crop=True):
    c = cache_latents(scan_images(folder), cache, vae, resolution, center_crop)
    return c, sorted(p.name for p in c["encoded"]), len(c["reused"])


def entries(cache):
    return sorted(p for p in cache.glob("*.safetensors") if not p.name.startswith("."))


def test_each_kind_of_change_reencodes_only_what_changed(images, tmp_path, vae):
    cache = tmp_path / "cache"
    first, enc, reused = run(images, cache, vae)
    assert (enc, reused) == (["00.png", "01.png", "02.png", "03.png", "04.png"], 0)
    assert run(images, cache, vae)[1:] == ([], 5)                       # nothing changed

    os.rename(images / "04.png", images / "04_renamed.png")            # renamed: same content, same latent
    assert run(images, cache, vae)[1:] == ([], 5)

    Image.open(DOG6 / "00.jpg").reduce(16).save(images / "02.png")      # replaced by another picture
    assert run(images, cache, vae)[1:] == (["02.png"], 4)

    im = Image.open(images / "03.png").convert("RGB")                  # edited: one pixel
    im.putpixel((5, 5), (0, 0, 0) if im.getpixel((5, 5)) != (0, 0, 0) else (255, 255, 255))
    im.save(images / "03.png")
    c, enc, reused = run(images, cache, vae)
    assert (enc, reused) == (["03.png"], 4)
    assert torch.equal(c["mean"][0], first["mean"][0])                # untouched entries are the same numbers

    Image.open(DOG6 / "01.jpg").reduce(16).save(images / "05.png")      # added
    assert run(images, cache, vae)[1:] == (["05.png"], 5)
    assert len(entries(cache)) == 6

    (images / "00.png").unlink()                                        # removed: its entry goes too
    assert run(images, cache, vae)[1:] == ([], 5)
    assert len(entries(cache)) == 5
    import json
    manifest = json.loads((cache / MANIFEST).read_text())
    assert sorted(os.path.basename(p) for p in manifest["entries"]) == ["01.png", "02.png", "03.png",
                                                                         "04_renamed.png", "05.png"]


@pytest.mark.parametrize("change", ["resolution", "crop", "vae"])
def test_settings_and_vae_changes_reencode_everything(images, tmp_path, vae, change):
    cache = tmp_path / "cache"
    run(images, cache, vae)
    if change == "resolution":
        c, enc, reused = run(images, cache, vae, resolution=48)
        assert c["mean"].shape[-1] == 24
    elif change == "crop":
        c, enc, reused = run(images, cache, vae, center_crop=False)
    else:                                                              # same architecture, other weights
        c, enc, reused = run(images, cache, make_tiny_pipeline(seed=1).vae)
    assert (len(enc), reused) == (5, 0)
    assert len(entries(cache)) == 5                                    # the old entries were removed
    assert run(images, cache, vae)[1:][1] == 0                         # and switching back encodes again


@pytest.mark.parametrize("damage", ["truncated", "flipped", "swapped", "garbage", "empty", "pickle"])
def test_a_damaged_entry_is_rebuilt_not_trusted(images, tmp_path, vae, damage):
    cache = tmp_path / "cache"
    first, _, _ = run(images, cache, vae)
    key = {os.path.basename(p): k for p, k in __import__("json").loads((cache / MANIFEST).read_text())["entries"].items()}
    victim, other = cache / f"{key['02.png']}.safetensors", cache / f"{key['03.png']}.safetensors"
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":                                          # header intact, one number changed
        data[-7] ^= 0x40
        victim.write_bytes(data)
    elif damage == "swapped":                                          # a valid entry, but another image's
        shutil.copy(other, victim)
    elif damage == "garbage":
        victim.write_text("not safetensors")
    elif damage == "empty":
        victim.write_bytes(b"")
    else:                                                              # a pickle planted under the entry's name
        import pickle
        victim.write_bytes(pickle.dumps({"mean": torch.zeros(4, 16, 16)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c, enc, reused = run(images, cache, vae)
    assert (enc, reused) == (["02.png"], 4)
    assert any(victim.name in str(w.message) for w in caught)
    assert torch.allclose(c["mean"][2], first["mean"][2], atol=1e-5)
    assert run(images, cache, vae)[1:] == ([], 5)                      # and the rebuilt entry is trusted again


def test_leftovers_of_a_killed_run_are_removed_and_entries_without_manifest_reused(images, tmp_path, vae):
    cache = tmp_path / "cache"
    run(images, cache, vae)
    (cache / MANIFEST).unlink()                                        # killed before the manifest was written
    dead = cache / ".abc.safetensors.999999999.x1y2z3.tmp.safetensors"   # a temp file of a process that is gone
    dead.write_bytes(b"half")
    live = cache / f".abc.safetensors.{os.getpid()}.x1y2z3.tmp.safetensors"   # one of a live writer: kept
    live.write_bytes(b"half")
    assert run(images, cache, vae)[1:] == ([], 5)
    assert not dead.exists() and live.exists() and (cache / MANIFEST).exists()


def test_the_vae_in_float16_shares_the_cache_and_another_vae_does_not(images, tmp_path, tiny_pipeline_dir, vae):
    """A notebook encodes with its float16 sampling copy, training reads with the float32 VAE: one set of entries.
    A VAE whose encoder differs by one float16 step in one number, or whose config differs, gets its own."""
    import copy

    from dbtutor.latent_cache import vae_identity
    cache = tmp_path / "cache"
    half = load_pipeline(str(tiny_pipeline_dir), dtype=torch.float16).vae
    assert vae_identity(half) == vae_identity(vae)
    c16, enc, reused = run(images, cache, half)
    assert (len(enc), reused) == (5, 0)
    c32, enc, reused = run(images, cache, vae)
    assert (enc, reused) == ([], 5) and torch.equal(c32["mean"], c16["mean"])
    fresh = cache_latents(scan_images(images), tmp_path / "fresh", vae, 32)          # what float32 encodes
    assert 0 < (c16["mean"] - fresh["mean"]).abs().max() < 0.05 * fresh["mean"].abs().max()

    one_step = copy.deepcopy(vae)
    w = one_step.encoder.conv_in.weight.data
    w[0, 0, 0, 0] = (w[0, 0, 0, 0].half().view(torch.int16) + 1).view(torch.float16).float()  # next float16 up
    moved = tmp_path / "moved_model"                    # the same model in another folder: the same entries
    shutil.copytree(tiny_pipeline_dir, moved)
    moved_vae = load_pipeline(str(moved)).vae
    assert moved_vae.config._name_or_path != vae.config._name_or_path
    assert run(images, cache, moved_vae)[1:] == ([], 5)
    config = copy.deepcopy(vae)
    config.register_to_config(scaling_factor=0.5)
    for other in (one_step, config):
        assert vae_identity(other) != vae_identity(vae)
        assert run(images, cache, other)[1:] == (["00.png", "01.png", "02.png", "03.png", "04.png"], 0)
