"""Samples along the way: the same seeds at every validation, kept on resume, scored, logged, and training unchanged."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers import PNDMScheduler

import dbtutor
from dbtutor import ConfigError
from dbtutor.models.pipeline import load_pipeline, sample
from dbtutor.runs.validation import SEED, Validator, load_validations, validation_prompts

from conftest import SUBJECT


def saved_scheduler(folder):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline.from_pretrained(str(folder)).scheduler


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_default_prompts_follow_the_instance_and_class_prompts():
    cfg = dbtutor.load_config(overrides={"model.data.instance_prompt": "a photo of zwx dog",
                                         "model.data.regularization_prompt": "a photo of a dog"})
    assert validation_prompts(cfg) == ["a photo of zwx dog", "a photo of zwx dog on the snow", "a photo of a dog"]
    cfg = dbtutor.load_config(overrides={"trainer.validation.prompts": ["a photo of sks ball in the sky"]})
    assert validation_prompts(cfg) == ["a photo of sks ball in the sky"]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 4])
def test_validation_leaves_training_exactly_as_it_was(tiny_config, tmp_path, rank):
    """The loss history and the trained weights are the same with validation at every step and without it."""
    common = {"model.lora.rank": rank, "trainer.validation.num_images": 2, "optim.lr": 1e-2, "optim.warmup_steps": 0}
    off = dbtutor.train(tiny_config(**common, **{"output_dir": str(tmp_path / "off"), "trainer.validation.every": 0}))
    on = dbtutor.train(tiny_config(**common, **{"output_dir": str(tmp_path / "on"), "trainer.validation.every": 1}))
    assert on.history == off.history                                    # exactly: not one draw moved
    assert not (tmp_path / "off" / "validation").exists()
    for a, b in zip(off.pipe.unet.state_dict().values(), on.pipe.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert type(saved_scheduler(tmp_path / "on")) is PNDMScheduler     # the saved pipeline keeps its own sampler

    v = load_validations(tmp_path / "on")
    assert v.steps == [0, 1, 2, 3, 4] and v.seeds == [SEED, SEED + 1] and v.scorer == "judge"
    assert v.prompts == ["a photo of sks ball", "a photo of sks ball on the snow", "a photo of a ball"]
    for r in v.records:
        assert {p: len(ims) for p, ims in r["images"].items()} == {p: 2 for p in v.prompts}
        assert all(0 <= r["scores"][p]["look_share"] <= 1 for p in v.prompts)
    strip = Image.open(tmp_path / "on" / "validation" / "strip.png")
    assert strip.height > 6 * 32 and strip.width > 5 * 32                # 3 prompts x 2 seeds down, 5 steps across

    # the last validation is the model that was saved (LoRA: its adapters were active), the first one the base
    saved = load_pipeline(str(tmp_path / "on"))
    again = sample(saved, [p for p in v.prompts for _ in v.seeds], v.seeds * 3, 2, 5.0, "dpm", batch_size=4)
    last = [im for p in v.prompts for im in v.records[-1]["images"][p]]
    first = [im for p in v.prompts for im in v.records[0]["images"][p]]
    same = max(np.abs(pixels(a) - pixels(b)).max() for a, b in zip(again, last))
    moved = max(np.abs(pixels(a) - pixels(b)).max() for a, b in zip(first, last))
    assert same <= 2 and moved > 10


def test_sampling_puts_the_modules_back_in_train_mode_and_keeps_the_scheduler(tiny_config, monkeypatch):
    from accelerate import Accelerator
    import dbtutor.models.pipeline as P
    cfg = tiny_config(**{"trainer.validation.every": 1})
    pipe = load_pipeline(cfg.model.pretrained)
    pipe.unet.train()
    scheduler = pipe.scheduler
    seen = []
    real = P.sample

    def spy(pipe, *a, **k):
        seen.append((pipe.unet.training, pipe.text_encoder.training))
        return real(pipe, *a, **k)
    monkeypatch.setattr(P, "sample", spy)
    state = torch.random.get_rng_state()
    validator = Validator(cfg, pipe, Accelerator(cpu=True))
    images = validator.sample()
    assert seen == [(False, False)] and len(images) == 3
    assert pipe.unet.training and not pipe.text_encoder.training and pipe.scheduler is scheduler
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.slow
@pytest.mark.versions
def test_a_resumed_run_keeps_the_validations_made_and_appends_to_the_tensorboard_log(tiny_config, tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = tiny_config(**{"trainer.validation.every": 1, "trainer.log_with": "tensorboard"})
    out = tmp_path / "out"

    def stop_at_3(rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt                                    # after step 3 and its validation
    with pytest.raises(KeyboardInterrupt):
        dbtutor.train(cfg, callback=stop_at_3)
    assert load_validations(out).steps == [0, 1, 2, 3]
    made = {p.name: p.stat().st_mtime_ns for p in (out / "validation").glob("step_*.png")}
    res = dbtutor.train(cfg)                                            # resumes from the checkpoint of step 2
    v = load_validations(out)
    assert v.steps == [0, 1, 2, 3, 4]
    now = {p.name: p.stat().st_mtime_ns for p in (out / "validation").glob("step_*.png")}
    assert all(now[f"step_00000{s}.png"] == made[f"step_00000{s}.png"] for s in (0, 1, 2))    # kept, not redone
    assert now["step_000003.png"] != made["step_000003.png"]          # after the checkpoint: made again

    # TensorBoard's own reader: every step's scalars once (the interrupted run's step 3 is hidden), all pictures
    acc = ea.EventAccumulator(str(out / "logs" / "dbtutor"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for key in ("loss", "instance_loss", "prior_loss", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3, 4], key
        assert [e.value for e in events] == pytest.approx([h[key] for h in res.history], rel=1e-6), key
    assert [e.step for e in acc.Images("validation")] == [0, 1, 2, 3, 4]
    assert acc.Images("validation")[0].height == 3 * 32                 # 3 prompts x 1 seed of 32 px
    share = acc.Scalars("validation/a photo of a ball/look_share")
    assert [e.step for e in share] == v.steps and [e.value for e in share] == v.shares("a photo of a ball")


@pytest.mark.slow
def test_other_validation_settings_on_resume_start_a_new_strip(tiny_config, tmp_path, capsys):
    keep = {"trainer.validation.every": 1, "trainer.keep_checkpoints": True}
    dbtutor.train(tiny_config(**keep, **{"trainer.max_steps": 2}))
    dbtutor.train(tiny_config(**keep, **{"trainer.max_steps": 4, "trainer.validation.num_images": 2}))
    assert "other prompts, seeds or sampler" in capsys.readouterr().out
    assert load_validations(tmp_path / "out").steps == [2, 3, 4]          # from where it resumed
    old = json.loads((tmp_path / "out" / "validation.old" / "validation.json").read_text())
    assert [r["step"] for r in old["validations"]] == [0, 1, 2]


def test_a_missing_tracker_library_is_one_line(tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)                     # as if not installed
    with pytest.raises(ConfigError, match=r"trainer.log_with=wandb needs the wandb package: pip install "
                                          r"'dbtutor\[wandb\]'") as e:
        dbtutor.train(tiny_config(**{"trainer.log_with": "wandb"}))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_real_photos_are_scored_with_local_clip_and_dino_or_say_once_why_not(tiny_config, tmp_path, capsys,
                                                                             monkeypatch):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model
    photos = tmp_path / "photos"                                         # no subject.json: not the toy world
    photos.mkdir()
    for p in sorted(SUBJECT.glob("*.png"))[:3]:
        shutil.copy(p, photos / p.name)
    cfg = tiny_config(**{"model.data.instance_dir": str(photos), "trainer.max_steps": 2,
                         "trainer.validation.every": 2})
    monkeypatch.setenv("DBTUTOR_CLIP_MODEL", "nobody/clip-not-on-this-machine")
    monkeypatch.setenv("DBTUTOR_DINO_MODEL", "nobody/dino-not-on-this-machine")
    dbtutor.train(cfg)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation:")]
    assert len(said) == 1 and "no scores" in said[0] and "never downloaded" in said[0]
    v = load_validations(cfg.output_dir)
    assert v.scorer is None and v.steps == [0, 2] and all(r["scores"] == {} for r in v.records)

    clip, dino = tmp_path / "clip", tmp_path / "dino"                   # tiny random ones, saved locally
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config={"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77},
                         vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                        "num_hidden_layers": 1, "num_attention_heads": 2},
                         projection_dim=8)).save_pretrained(clip)
    CLIPTokenizer.from_pretrained(SUBJECT.parent.parent / "models" / "toyworld" / "tokenizer").save_pretrained(clip)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2)).save_pretrained(dino)
    monkeypatch.setenv("DBTUTOR_DINO_MODEL", str(dino))                # DINOv2 here, CLIP not: DINO scores alone
    dbtutor.train(tiny_config(**{"model.data.instance_dir": str(photos), "trainer.max_steps": 2,
                                 "trainer.validation.every": 2, "output_dir": str(tmp_path / "dino")}))
    v = load_validations(tmp_path / "dino")
    assert v.scorer == "clip" and v.steps == [0, 2]
    assert all(set(s) == {"dino"} for r in v.records for s in r["scores"].values())
    monkeypatch.setenv("DBTUTOR_CLIP_MODEL", str(clip))                # both here: CLIP-I too
    dbtutor.train(tiny_config(**{"model.data.instance_dir": str(photos), "trainer.max_steps": 2,
                                 "trainer.validation.every": 2, "output_dir": str(tmp_path / "scored")}))
    v = load_validations(tmp_path / "scored")
    assert v.scorer == "clip"
    for r in v.records:
        assert set(r["scores"]) == set(v.prompts)
        assert all(-1 <= s["dino"] <= 1 and -1 <= s["clip_i"] <= 1 for s in r["scores"].values())


@pytest.mark.slow
def test_a_gpu_out_of_memory_while_sampling_stops_the_validations_not_the_run(tiny_config, monkeypatch):
    from dbtutor.runs.validation import Validator, load_validations
    real = Validator.sample
    calls = []

    def sample(self):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self)
    monkeypatch.setattr(Validator, "sample", sample)
    with pytest.warns(UserWarning, match="validation stopped at step 2, the GPU is out of memory"):
        res = dbtutor.train(tiny_config(**{"trainer.validation.every": 2, "trainer.max_steps": 4}))
    assert [h["step"] for h in res.history] == [1, 2, 3, 4] and len(calls) == 2
    assert load_validations(res.output_dir).steps == [0]
