"""Training: NeMo's loss, text-encoder freezing, stock-diffusers output, exact resume, extending a finished run."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import dbtutor
from dbtutor import dreambooth_loss


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_loss_is_nemos_formula(weight):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    hand_inst = ((pred[:2] - target[:2]) ** 2).mean()                 # instance examples come first
    hand_prior = ((pred[2:] - target[2:]) ** 2).mean()
    loss, inst, prior = dreambooth_loss(pred, target, True, weight)
    assert torch.allclose(inst, hand_inst) and torch.allclose(prior, hand_prior)
    assert torch.allclose(loss, hand_inst + weight * hand_prior)
    plain, _, zero = dreambooth_loss(pred, target, False, weight)
    assert torch.allclose(plain, F.mse_loss(pred, target)) and zero == 0


@pytest.mark.slow
def test_recorded_loss_follows_the_weight_on_the_same_batch(tiny_config, tmp_path):
    runs = {}
    for w in (0.5, 2.0):
        cfg = tiny_config(**{"model.prior_loss_weight": w, "trainer.max_steps": 1, "output_dir": str(tmp_path / f"w{w}")})
        runs[w] = dbtutor.train(cfg).history[0]
    a, b = runs[0.5], runs[2.0]
    assert a["instance_loss"] == pytest.approx(b["instance_loss"], rel=1e-6)   # same data, same first step
    assert a["prior_loss"] == pytest.approx(b["prior_loss"], rel=1e-6)
    for w, r in runs.items():
        assert r["loss"] == pytest.approx(r["instance_loss"] + w * r["prior_loss"], rel=1e-5)


@pytest.mark.parametrize("train_te", [True, False])
@pytest.mark.slow
def test_text_encoder_changes_iff_trained(tiny_config, tiny_pipeline_dir, tmp_path, train_te):
    cfg = tiny_config(**{"model.train_text_encoder": train_te, "trainer.max_steps": 3, "optim.lr": 1e-2})
    out = dbtutor.train(cfg).output_dir
    before = load_file(str(tiny_pipeline_dir / "text_encoder" / "model.safetensors"))
    after = load_file(str(out / "text_encoder" / "model.safetensors"))
    assert after.keys() == before.keys() and all(k.startswith("text_model.") for k in after)   # SD's layout
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == train_te
    unet_before = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)


def test_output_is_a_stock_diffusers_pipeline(tiny_config):
    out = dbtutor.train(tiny_config(**{"model.with_prior_preservation": False})).output_dir
    pipe = StableDiffusionPipeline.from_pretrained(out)
    images = pipe("a photo of sks ball", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_resume_continues_with_the_same_result(tiny_config, tmp_path):
    """With trainer.keep_checkpoints the last checkpoint stays, and a longer run continues it exactly."""
    whole = dbtutor.train(tiny_config(**{"output_dir": str(tmp_path / "whole")}))
    keep = {"output_dir": str(tmp_path / "parts"), "trainer.keep_checkpoints": True}
    dbtutor.train(tiny_config(**keep, **{"trainer.max_steps": 2}))
    assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == ["step_000002"]
    parts = dbtutor.train(tiny_config(**keep, **{"trainer.max_steps": 4}))
    assert [h["step"] for h in parts.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in parts.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)
    a = load_file(str(whole.output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(parts.output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == ["step_000004"]


@pytest.mark.slow
def test_a_finished_run_keeps_no_checkpoints_by_default(tiny_config):
    seen = []
    cfg = tiny_config()                                                   # checkpoint_every 2, max_steps 4
    ckpts = Path(cfg.output_dir) / "checkpoints"
    res = dbtutor.train(cfg, callback=lambda rec: seen.append(sorted(p.name for p in ckpts.glob("step_*"))))
    assert seen[2] == ["step_000002"]                                     # written on the way ...
    assert not ckpts.exists() and not (res.output_dir / ".del-checkpoints").exists()      # ... gone at the end
    assert (res.output_dir / "model_index.json").exists()


@pytest.mark.slow
def test_extending_a_finished_run_without_checkpoints_starts_from_its_weights(tiny_config, tmp_path, capsys):
    common = {"optim.warmup_steps": 6, "output_dir": str(tmp_path / "run")}
    first = dbtutor.train(tiny_config(**common))
    unet4 = load_file(str(first.output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    capsys.readouterr()
    longer = dbtutor.train(tiny_config(**common, **{"trainer.max_steps": 6}))
    said = [line for line in capsys.readouterr().out.splitlines() if "optimizer" in line]
    assert len(said) == 1 and "saved pipeline (step 4)" in said[0] and "fresh optimizer state" in said[0]
    assert [h["step"] for h in longer.history] == [1, 2, 3, 4, 5, 6]
    assert longer.history[:4] == first.history                            # the loss history goes on
    straight = dbtutor.train(tiny_config(**{**common, "output_dir": str(tmp_path / "straight"), "trainer.max_steps": 6}))
    assert [h["lr"] for h in longer.history] == pytest.approx([h["lr"] for h in straight.history])   # so does the lr
    unet6 = load_file(str(longer.output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(unet4[k], unet6[k]) for k in unet4)        # it trained on from step 4
    assert not (longer.output_dir / "checkpoints").exists()
    # the same command again: nothing left to train, the pipeline is not rewritten
    stamp = (longer.output_dir / "model_index.json").stat().st_mtime_ns
    again = dbtutor.train(tiny_config(**common, **{"trainer.max_steps": 6}))
    assert "nothing to train" in capsys.readouterr().out
    assert again.history == longer.history and (longer.output_dir / "model_index.json").stat().st_mtime_ns == stamp
    with pytest.raises(dbtutor.ConfigError, match="already holds 6 steps, more than trainer.max_steps=4"):
        dbtutor.train(tiny_config(**common))


@pytest.mark.slow
def test_resume_refuses_a_changed_config(tiny_config, tmp_path):
    dbtutor.train(tiny_config(**{"output_dir": str(tmp_path / "o"), "trainer.max_steps": 2}))
    with pytest.raises(dbtutor.ConfigError, match="prior_loss_weight"):
        dbtutor.train(tiny_config(**{"output_dir": str(tmp_path / "o"), "model.prior_loss_weight": 0.3}))


def test_a_key_added_after_a_run_was_saved_counts_as_its_default():
    from dbtutor.runs.same_run import changed_keys
    old = {"optim.lr": 1e-4}                                  # saved before optim.use_8bit_adam existed
    assert changed_keys(old, {"optim.lr": 1e-4, "optim.use_8bit_adam": False}) == []
    assert changed_keys(old, {"optim.lr": 1e-4, "optim.use_8bit_adam": True}) == ["optim.use_8bit_adam"]
    assert changed_keys(old, {"optim.lr": 2e-4, "optim.use_8bit_adam": False}) == ["optim.lr"]


@pytest.mark.slow
def test_v_prediction_checkpoint_trains_against_velocity(tmp_path, tiny_config, monkeypatch):
    from diffusers import DDPMScheduler
    from conftest import make_tiny_pipeline
    make_tiny_pipeline(prediction_type="v_prediction").save_pretrained(tmp_path / "v")
    calls = []
    real = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: calls.append(1) or real(self, *a))
    res = dbtutor.train(tiny_config(**{"model.pretrained": str(tmp_path / "v"), "trainer.max_steps": 2}))
    assert len(calls) == 2
    assert StableDiffusionPipeline.from_pretrained(res.output_dir).scheduler.config.prediction_type == "v_prediction"
    calls.clear()
    dbtutor.train(tiny_config(**{"trainer.max_steps": 2, "output_dir": str(tmp_path / "eps"),
                                 "model.data.regularization_dir": str(tmp_path / "reg_eps")}))   # another model
    assert calls == []
