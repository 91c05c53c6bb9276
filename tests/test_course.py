"""The course's shared setup: one profile sets every default, the environment and a notebook's cell override it,
a choice is remembered for the next notebooks, and the measuring stick works on both back ends."""
from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from dbtutor import course, load_config
from dbtutor.errors import ConfigError

from conftest import DOG6, SUBJECT


@pytest.fixture
def work(tmp_path, monkeypatch):
    for name in ("DBTUTOR_PROFILE", "DBTUTOR_PRETRAINED", "DBTUTOR_NB_MAX_STEPS", "DBTUTOR_NB_DTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBTUTOR_NB_WORK", str(tmp_path / "work"))
    return tmp_path / "work"


def test_a_profile_sets_every_default_and_the_environment_and_the_cell_override_it(work, monkeypatch):
    toy = course.settings()
    assert toy.profile == "toy" and toy.max_steps == 500 and toy.resolution == 64 and toy.work == work
    assert toy.instance_prompt == "a photo of sks ball" and toy.prompts == ["a photo of sks ball on the snow",
                                                                            "a photo of a ball"]
    sd = course.settings("sd15")
    assert (sd.resolution, sd.class_noun, sd.guidance) == (512, "dog", 7.5)
    assert sd.subject_dir == DOG6 and sd.class_prompt == "a photo of a dog"
    monkeypatch.setenv("DBTUTOR_NB_MAX_STEPS", "20")
    assert course.settings("sd15").max_steps == 20 and course.settings("sd15").sources["max_steps"] == "environment"
    c = course.settings("sd15", max_steps=7, class_noun="backpack")
    assert c.max_steps == 7 and c.class_prompt == "a photo of a backpack" and c.sources["max_steps"] == "this notebook"
    assert course.settings("sd15", max_steps=None).max_steps == 20          # None: not set by the cell
    with pytest.raises(ConfigError, match="no setting of the course"):
        course.settings(max_step=3)
    with pytest.raises(ConfigError, match="is not one of toy, sd15"):
        course.settings("sdxl")
    monkeypatch.setenv("DBTUTOR_NB_MAX_STEPS", "many")
    with pytest.raises(ConfigError, match="DBTUTOR_NB_MAX_STEPS='many' is not a valid int"):
        course.settings()


@pytest.mark.parametrize("profile", ["toy", "sd15"])
def test_the_overrides_are_a_valid_training_config(work, profile):
    c = course.settings(profile)
    cfg = load_config(overrides={**c.overrides, "output_dir": str(work / "x")})
    assert cfg.model.data.resolution == c.resolution and cfg.model.lora.rank == c.lora_rank
    assert str(c.reg_dir).startswith(str(work / "reg"))
    run = course.run_dir(work, cfg)
    assert run == course.run_dir(work, load_config(overrides={**c.overrides, "output_dir": str(work / "y")}))
    other = load_config(overrides={**c.overrides, "optim.lr": 3e-4, "output_dir": str(work / "x")})
    assert course.run_dir(work, other) != run


def test_a_choice_made_in_one_notebook_reaches_the_next(work, monkeypatch, tmp_path, capsys):
    photos = tmp_path / "photos"
    course.setup("sd15", subject_dir=photos, class_noun="backpack")
    assert "profile sd15" in capsys.readouterr().out
    assert json.loads((work / course.CHOICE_FILE).read_text())["profile"] == "sd15"
    nxt = course.setup()                                      # a later notebook, PROFILE = None
    assert nxt.profile == "sd15" and nxt.subject_dir == photos and nxt.class_noun == "backpack"
    assert nxt.sources["subject_dir"] == "an earlier notebook"
    monkeypatch.setenv("DBTUTOR_PROFILE", "toy")              # the environment wins over the remembered choice
    assert course.setup().profile == "toy"
    assert course.setup().class_noun == "ball"                # a photo folder is remembered for its profile only


def test_sd15_on_a_gpu_takes_the_memory_settings_for_that_card(work, monkeypatch):
    """What gpu_settings decides reaches the course's config (tests/test_gpu_route.py: what it decides on a T4)."""
    import torch

    import dbtutor.memory
    import dbtutor.pipeline
    monkeypatch.setattr(dbtutor.pipeline, "pick_device", lambda device="auto": torch.device("cuda"))
    picked = {"model.lora.rank": 16, "model.gradient_checkpointing": True, "optim.use_8bit_adam": False,
              "optim.lr": 1e-4, "trainer.precision": "bf16", "why": "a 24 GB card"}
    asked = []
    monkeypatch.setattr(dbtutor.memory, "gpu_settings", lambda *a, **k: asked.append(k) or dict(picked))
    c = course.settings("sd15")
    assert (c.lora_rank, c.lr, c.precision, c.dtype, c.variant) == (16, 1e-4, "bf16", torch.float16, "fp16")
    assert c.overrides["trainer.precision"] == "bf16" and c.overrides["trainer.device"] == "cuda"
    assert asked == [{"train_text_encoder": False, "kind": "lora"}]
    assert course.settings("toy").precision == "32"           # the toy world ignores the card


def test_library_noise_is_dropped_and_real_warnings_stay():
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.WARNING)                   # the CLI tests may have set transformers' verbosity to error
    log.addHandler(handler)
    try:
        course.quiet_libraries()
        assert not dl.is_progress_bar_enabled() and not tl.is_progress_bar_enabled()
        log.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back")
        log.warning("a real warning")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        dl.enable_progress_bar()
        tl.enable_progress_bar()
    assert seen == ["a real warning"]


def test_the_judge_measures_the_toy_subject(work):
    from dbtutor.measure import JudgeMeasure, measurer, report
    m = measurer(SUBJECT)
    assert isinstance(m, JudgeMeasure)
    photos = [Image.open(p).convert("RGB") for p in sorted(SUBJECT.glob("*.png"))]
    s = m.scores(photos, [Image.new("RGB", (64, 64), (90, 160, 60))] * 2)
    assert s["subject_fidelity"] >= 0.8 and s["class_drift"] == 0.0
    assert "subject fidelity" in report("x", s)


def test_dino_measures_real_photos_and_a_missing_model_is_one_line(work, tiny_encoders, monkeypatch, capsys):
    from dbtutor.measure import ClipMeasure, measurer
    monkeypatch.setenv("DBTUTOR_CLIP_MODEL", str(tiny_encoders / "clip"))
    monkeypatch.setenv("DBTUTOR_DINO_MODEL", str(tiny_encoders / "dino"))
    m = measurer(DOG6)
    assert isinstance(m, ClipMeasure)
    photos = [Image.open(p).convert("RGB") for p in sorted(DOG6.glob("*.jpg"))]
    s = m.scores(photos[:2], [Image.new("RGB", (64, 64), (0, 0, 255)), Image.new("RGB", (64, 64), (255, 0, 0))])
    assert -1 <= s["class_drift"] < s["subject_fidelity"] <= 1 and 0 <= s["class_div"] <= 2
    monkeypatch.setenv("DBTUTOR_DINO_MODEL", str(work / "nothing"))
    assert measurer(DOG6) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no measurements in this notebook:") and "DINOv2" in out[0]
