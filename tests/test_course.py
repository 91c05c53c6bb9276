"""The course's shared setup: one profile sets every default, the environment and a notebook's cell override it,
a choice is remembered for the next notebooks, and the measuring stick works on both back ends."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from dbtutor import course, load_config
from dbtutor.core.errors import ConfigError

from conftest import DOG6, SUBJECT


@pytest.fixture
def work(tmp_path, monkeypatch):
    for name in ("DBTUTOR_PROFILE", "DBTUTOR_PRETRAINED", "DBTUTOR_NB_MAX_STEPS", "DBTUTOR_NB_DTYPE",
                 "DBTUTOR_ALLOW_CPU"):
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
    monkeypatch.setenv("DBTUTOR_ALLOW_CPU", "1")
    photos = tmp_path / "photos"
    course.setup("sd15", subject_dir=photos, class_noun="backpack")
    assert "profile sd15 (this notebook)" in capsys.readouterr().out
    assert json.loads((work / course.CHOICE_FILE).read_text())["profile"] == "sd15"
    nxt = course.setup()                                      # a later notebook, PROFILE = None
    assert nxt.profile == "sd15" and nxt.subject_dir == photos and nxt.class_noun == "backpack"
    assert nxt.sources["subject_dir"] == "an earlier notebook"
    assert "profile sd15 (an earlier notebook)" in capsys.readouterr().out
    course.setup(subject_dir=tmp_path / "other")              # its class noun is still the one chosen before
    assert "set CLASS_NOUN" not in capsys.readouterr().out
    monkeypatch.setenv("DBTUTOR_PROFILE", "toy")              # the environment wins over the remembered choice
    assert course.setup().profile == "toy"
    course.setup(subject_dir=photos)                          # photos, and the toy profile's "ball" for them
    assert "SUBJECT_DIR is your folder: set CLASS_NOUN to what it shows (now 'ball')" in capsys.readouterr().out
    assert course.setup().class_noun == "ball"                # "backpack" was chosen for sd15 only


def test_the_settings_that_name_a_run_set_in_one_notebook_are_the_next_ones(work, monkeypatch, capsys):
    """MAX_STEPS set in 02 is 05's, 06's and 07's too: the same overrides, so the same run folder (no retraining);
    remembered per profile; a setting that only changes what a notebook shows is not remembered; the environment
    and the next cell still win, and the printed lines say where each value came from."""
    monkeypatch.setenv("DBTUTOR_ALLOW_CPU", "1")
    first = course.setup("sd15", max_steps=7, lr=3e-5, samples_per_prompt=2)
    later = course.setup()
    assert (later.max_steps, later.lr, later.samples_per_prompt) == (7, 3e-5, 4)
    assert later.sources["max_steps"] == later.sources["lr"] == "an earlier notebook"
    assert later.overrides == first.overrides
    out = capsys.readouterr().out
    assert "lr=3e-05, max_steps=7, samples_per_prompt=2 (this notebook)" in out
    assert "lr=3e-05, max_steps=7 (an earlier notebook)" in out
    assert course.setup("toy").max_steps == 500               # each profile keeps its own values
    assert course.setup("sd15").max_steps == 7
    monkeypatch.setenv("DBTUTOR_NB_MAX_STEPS", "9")
    assert course.settings().max_steps == 9 and course.settings().sources["max_steps"] == "environment"
    monkeypatch.delenv("DBTUTOR_NB_MAX_STEPS")
    assert course.setup(max_steps=11).max_steps == 11 and course.settings().max_steps == 11
    kept = json.loads((work / course.CHOICE_FILE).read_text())
    assert kept["settings"]["sd15"] == {"max_steps": 11, "lr": 3e-5} and kept["profile"] == "sd15"
    before = (work / course.CHOICE_FILE).stat().st_mtime_ns
    course.setup(max_steps=11)                                # nothing new: the file is not written again
    assert (work / course.CHOICE_FILE).stat().st_mtime_ns == before


def test_the_remembered_settings_are_exactly_those_that_name_a_run(work):
    """choices.NAMES_A_RUN is checked against the run folder itself: each setting of the course changed alone, a
    setting names a run if and only if its run folder (course.run_dir) changes."""
    from dbtutor.course.choices import NAMES_A_RUN

    def other(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value * 2 + 8
        if isinstance(value, Path):
            return DOG6
        return {"dpm": "ddim", "32": "bf16", "": "fp16"}.get(value, value + "x")

    base = course.run_dir(work, course.run_config(course.settings("toy").overrides, work))
    naming = set()
    for key, value in course.PROFILES["toy"].items():
        c = course.settings("toy", **{key: other(value)})
        if course.run_dir(work, course.run_config(c.overrides, work)) != base:
            naming.add(key)
    assert naming == set(NAMES_A_RUN)


def test_a_damaged_choice_file_is_one_line_naming_it(work):
    work.mkdir(parents=True)
    (work / course.CHOICE_FILE).write_text("{")
    with pytest.raises(ConfigError, match=r"course\.json cannot be read .*delete it"):
        course.settings()
    (work / course.CHOICE_FILE).write_text('{"profile": "sd15", "settings": {"sd15": {"max_steps": "many"}}}')
    with pytest.raises(ConfigError, match=r"course\.json: sd15 max_steps='many' is not a valid int"):
        course.settings()


def test_a_gpu_profile_without_a_gpu_stops_in_setup_with_one_line(work, monkeypatch):
    """sd15 on a CPU would take hours: setup stops with one line naming the GPU runtime (a SystemExit, which a
    notebook shows as that line, not a traceback), after keeping the choice for the GPU runtime that follows;
    DBTUTOR_ALLOW_CPU=1 runs it anyway; settings() (display, tools) never refuses; the toy world never needs one."""
    import torch

    import dbtutor.models.pipeline
    with pytest.raises(SystemExit) as stop:
        course.setup("sd15")
    msg = str(stop.value)
    assert "\n" not in msg and "Runtime → Change runtime type → T4 GPU" in msg and "DBTUTOR_ALLOW_CPU=1" in msg
    assert json.loads((work / course.CHOICE_FILE).read_text())["profile"] == "sd15"
    assert course.settings().profile == "sd15" and course.setup("toy").profile == "toy"
    monkeypatch.setenv("DBTUTOR_ALLOW_CPU", "1")
    assert course.setup("sd15").device.type == "cpu"
    monkeypatch.delenv("DBTUTOR_ALLOW_CPU")
    monkeypatch.setattr(dbtutor.models.pipeline, "pick_device", lambda device="auto": torch.device("mps"))
    assert course.setup("sd15").device.type == "mps"


def test_sd15_on_a_gpu_takes_the_memory_settings_for_that_card(work, monkeypatch):
    """What gpu_settings decides reaches the course's config (tests/test_gpu_route.py: what it decides on a T4)."""
    import torch

    import dbtutor.models.memory
    import dbtutor.models.pipeline
    monkeypatch.setattr(dbtutor.models.pipeline, "pick_device", lambda device="auto": torch.device("cuda"))
    picked = {"model.lora.rank": 16, "model.gradient_checkpointing": True, "optim.use_8bit_adam": False,
              "optim.lr": 1e-4, "trainer.precision": "bf16", "why": "a 24 GB card"}
    asked = []
    monkeypatch.setattr(dbtutor.models.memory, "gpu_settings", lambda *a, **k: asked.append(k) or dict(picked))
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
    from dbtutor.measuring.measure import JudgeMeasure, measurer, report
    m = measurer(SUBJECT)
    assert isinstance(m, JudgeMeasure)
    photos = [Image.open(p).convert("RGB") for p in sorted(SUBJECT.glob("*.png"))]
    s = m.scores(photos, [Image.new("RGB", (64, 64), (90, 160, 60))] * 2)
    assert s["subject_fidelity"] >= 0.8 and s["class_drift"] == 0.0
    assert "subject fidelity" in report("x", s)


def test_dino_measures_real_photos_and_a_missing_model_is_one_line(work, tiny_encoders, monkeypatch, capsys):
    from dbtutor.measuring.measure import ClipMeasure, measurer
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
