"""Odd and broken files in the image folders: each is used correctly (converted, rotated, resized) or skipped
with a warning that names it; a folder with nothing usable is one clear error, also through the CLI."""
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dbtutor
from dbtutor import DataError, load_image, preprocess, scan_images
from dbtutor.core.images import MAX_PIXELS, SkippedImageWarning
from dbtutor.regularization import count_images
from conftest import DOG6, ROOT

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def dog(i=0, size=(96, 64)) -> Image.Image:
    """A real photo (data/dog6), cropped to `size` after a cheap downscale."""
    im = Image.open(DOG6 / f"{i:02d}.jpg").convert("RGB").reduce(8)
    return im.crop((0, 0, *size))


def halves(size=(4, 3), left=RED, right=BLUE) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def png_bytes(im, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG", **kw)
    return b.getvalue()


def jpeg_bytes(im, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=95, **kw)
    return b.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of w x h pixels that takes a few KB on disk (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    comp, row = zlib.compressobj(1), b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def close(a, b, tol=3):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


# ---- the corpus: name -> (how to write it, None = must be skipped | check(loaded RGB image)) ----------------

def w_bytes(data):
    return lambda p: p.write_bytes(data)


def w_image(im, **kw):
    return lambda p: im.save(p, **kw)


def w_corrupt_png(p):
    data = bytearray(png_bytes(dog(1)))
    i = data.index(b"IDAT")
    for k in range(i + 200, i + 260):
        data[k] ^= 0x5A
    p.write_bytes(bytes(data))


def w_exif_rotated(p):
    # a camera held upright stores the sensor image sideways plus EXIF orientation 6 ("rotate 90 cw to view")
    exif = Image.Exif()
    exif[0x0112] = 6
    dog(2).transpose(Image.Transpose.ROTATE_90).save(p, "JPEG", quality=95, exif=exif)


def w_animated(p):
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)


def w_rgba(p):
    im = Image.new("RGBA", (4, 1), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 255, 0, 0))          # fully transparent green -> white
    im.putpixel((2, 0), (0, 0, 255, 128))        # half-transparent blue over white
    im.save(p)


def w_la(p):
    im = Image.new("LA", (2, 1), (0, 255))
    im.putpixel((1, 0), (0, 0))
    im.save(p)


def w_palette(p):
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(p, transparency=1)                   # palette entry 1 (green) is transparent


def w_gray16(p):
    a = np.full((4, 4), 25700, dtype=np.uint16)  # 25700 / 257 = 100
    a[:, 2:] = 1000                              # 1000 / 257 = 3.9: dark stays dark (not stretched to 255)
    Image.fromarray(a).save(p)


def w_gray16_dark(p):
    Image.fromarray(np.full((4, 4), 2570, dtype=np.uint16)).save(p)      # all 10 / 255


def w_onebit(p):
    im = Image.new("1", (2, 2), 0)
    im.putpixel((1, 0), 1)
    im.save(p)


def w_cmyk(p):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, "JPEG", quality=95)    # cyan 0, magenta + yellow: red


def w_symlink(p):
    os.symlink(p.parent / "nowhere.jpg", p)


def w_subfolder(p):
    p.mkdir()
    dog(3).save(p / "inside.jpg")


CASES = {
    # broken: skipped, named in a warning
    "empty.jpg": (w_bytes(b""), None),
    "truncated.jpg": (lambda p: p.write_bytes(jpeg_bytes(dog(0))[:1500]), None),
    "corrupt.png": (w_corrupt_png, None),
    "notes.png": (w_bytes(b"this is a text file with a .png name\n"), None),
    "bomb.png": (w_bytes(bomb_png(20000, 20000)), None),                   # 400 Mpx: Pillow's own bomb check
    "huge.png": (w_bytes(bomb_png(11000, 11000)), None),                   # 121 Mpx: above dbtutor's MAX_PIXELS
    # odd but usable: converted, rotated, resized
    "rgba.png": (w_rgba, lambda im: close(im.getpixel((0, 0)), RED) and close(im.getpixel((1, 0)), WHITE)
                 and close(im.getpixel((2, 0)), (127, 127, 255))),
    "la.png": (w_la, lambda im: im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((1, 0)) == WHITE),
    "palette.png": (w_palette, lambda im: im.getpixel((0, 0)) == RED and im.getpixel((1, 0)) == WHITE),
    "cmyk.jpg": (w_cmyk, lambda im: close(im.getpixel((8, 8)), RED, tol=12)),
    "gray16.png": (w_gray16, lambda im: im.getpixel((0, 0)) == (100,) * 3 and im.getpixel((3, 3)) == (4,) * 3),
    "gray16_dark.png": (w_gray16_dark, lambda im: im.getpixel((0, 0)) == (10,) * 3),
    "onebit.png": (w_onebit, lambda im: im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((1, 0)) == WHITE),
    "exif_rotated.jpg": (w_exif_rotated, lambda im: im.size == (96, 64)
                         and np.abs(np.asarray(im, float) - np.asarray(dog(2), float)).mean() < 6),
    "tiny.png": (w_image(halves((4, 3))), lambda im: im.size == (4, 3)),
    "long_thin.png": (w_image(halves((2, 5000))), lambda im: im.size == (2, 5000)),
    "animated.gif": (w_animated, lambda im: close(im.getpixel((8, 8)), RED)),
    "dog.webp": (w_image(dog(3), lossless=True), lambda im: np.array_equal(np.asarray(im), np.asarray(dog(3)))),
    "UPPER.JPG": (w_image(dog(4), quality=95), lambda im: im.size == (96, 64)),
    "jpeg_named.png": (w_bytes(jpeg_bytes(dog(0))), lambda im: im.size == (96, 64)),
    "chien_été.jpg": (w_image(dog(1), quality=95), lambda im: im.size == (96, 64)),
    "狗.png": (w_image(dog(2)), lambda im: np.array_equal(np.asarray(im), np.asarray(dog(2)))),
    # not read at all: named in one warning (hidden files, sub-folders, other formats, dangling links)
    ".DS_Store": (w_bytes(b"\0\0\0\1Bud1" + b"\0" * 64), "ignored"),
    "._dog.jpg": (w_bytes(b"\0\5\26\7AppleDouble"), "ignored"),
    "raw": (w_subfolder, "ignored"),
    "IMG_0001.HEIC": (w_bytes(b"\0\0\0\x18ftypheic"), "ignored"),
    "dangling.jpg": (w_symlink, "ignored"),
    # notes and captions: ignored quietly
    "captions.txt": (w_bytes(b"a photo of sks dog\n"), "quiet"),
}


def build(folder: Path, names=None, latin1_name=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    cases = {n: CASES[n] for n in (names or CASES)}
    for name, (write, _) in cases.items():
        write(folder / name)
    if not latin1_name:
        return cases
    try:                                                        # a Latin-1 name that is not valid UTF-8
        raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
        with open(raw, "wb") as f:
            dog(4).save(f, "PNG")
        cases[os.fsdecode(b"caf\xe9.png")] = (None, lambda im: im.size == (96, 64))
    except (OSError, UnicodeError):
        pass
    return cases


def test_corpus_each_file_used_correctly_or_skipped_with_a_named_warning(tmp_path):
    folder = tmp_path / "photos"
    cases = build(folder)
    assert len(cases) >= 25
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = scan_images(folder, "model.data.instance_dir")
    texts = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    expect_used = {n for n, (_, check) in cases.items() if callable(check)}
    assert {p.name for p in used} == expect_used
    for name, (_, check) in cases.items():
        if check is None:                                        # skipped: exactly one warning names it, with why
            hits = [t for t in texts if t.startswith("skipping") and name in t]
            assert len(hits) == 1, (name, texts)
        elif check == "ignored":
            assert any(t.startswith("model.data.instance_dir") and name in t for t in texts), (name, texts)
        elif check == "quiet":
            assert not any(name in t for t in texts)
        else:                                                    # used: the pixels are right
            im = load_image(folder / name)
            assert im.mode == "RGB" and check(im), name
    assert any("too large" in t and "huge.png" in t for t in texts)
    assert any("empty file" in t and "empty.jpg" in t for t in texts)
    assert f"{MAX_PIXELS:,}" in next(t for t in texts if "bomb.png" in t)


def test_small_and_thin_images_are_resized_to_the_resolution():
    x = preprocess(halves((4, 3)), 32)                          # 4x3 up to 32x32, centre square = left 3 columns
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, -1, -1])[:, None].expand(3, 32), atol=0.05)   # red
    assert torch.allclose(x[:, :, -1], torch.tensor([-1.0, -1, 1])[:, None].expand(3, 32), atol=0.05)  # blue
    y = preprocess(halves((2, 5000)), 32)                       # only the 2x2 centre square is resampled
    assert y.shape == (3, 32, 32) and torch.all(y[0, :, 0] > 0.9)


def test_a_run_on_the_corpus_trains_and_fills_the_class_folder(tiny_config, tmp_path):
    inst, reg = tmp_path / "inst", tmp_path / "reg"
    build(inst)
    reg_names = ["empty.jpg", "notes.png", "bomb.png", "rgba.png", "cmyk.jpg", "gray16.png", "exif_rotated.jpg",
                 "animated.gif", "dog.webp", ".DS_Store", "raw"]
    build(reg, reg_names)
    (reg / "class_00001.png").write_bytes(png_bytes(dog(0))[:300])     # a truncated class image of an old run
    usable = count_images(reg)
    assert usable == 6 + (1 if os.fsdecode(b"caf\xe9.png") in os.listdir(reg) else 0)
    cfg = tiny_config(**{"model.data.instance_dir": str(inst), "model.data.regularization_dir": str(reg),
                         "model.data.num_reg_images": usable + 2, "trainer.max_steps": 2,
                         "trainer.checkpoint_every": 0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = dbtutor.train(cfg)
    assert len(res.history) == 2 and all(np.isfinite(h["loss"]) for h in res.history)
    assert count_images(reg) == usable + 2                         # class_00001 made again, plus one more
    assert Image.open(reg / "class_00001.png").size == (32, 32)
    texts = " | ".join(str(w.message) for w in caught)
    assert "class_00001.png is not a usable image" in texts and "truncated.jpg" in texts and "bomb.png" in texts
    entries = list((Path(cfg.output_dir) / "latents" / "instance").glob("*.safetensors"))
    assert len(entries) == len(scan_images(inst))


def test_nothing_usable_is_one_clear_error(tmp_path):
    bad = tmp_path / "only bad"
    build(bad, ["empty.jpg", "truncated.jpg", "notes.png", "bomb.png", ".DS_Store", "raw", "captions.txt"], latin1_name=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # no warning first: the one error says it all
        with pytest.raises(DataError) as e:
            scan_images(bad, "model.data.instance_dir")
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "no usable image" in msg
    assert "empty.jpg" in msg and "truncated.jpg" in msg


@pytest.mark.slow
def test_nothing_usable_through_the_cli(tmp_path, tiny_pipeline_dir):
    bad = tmp_path / "phone dump"
    build(bad, ["empty.jpg", "truncated.jpg", "corrupt.png", "notes.png", "bomb.png", ".DS_Store", "raw",
                "IMG_0001.HEIC"], latin1_name=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("DBTUTOR_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "dbtutor", "train", f"model.pretrained={tiny_pipeline_dir}",
                        f"model.data.instance_dir={bad}", f"output_dir={tmp_path / 'out'}",
                        f"model.data.regularization_dir={tmp_path / 'reg'}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dbtutor: error: model.data.instance_dir") and str(bad) in lines[0]
    assert "no usable image" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "reg").exists()
