"""Mixed precision on the CPU: fp16 loss scaling as accelerate does it on CUDA, on a CPU counted as CUDA
(DBTUTOR_SIMULATE_CUDA, dbtutor/core/hooks.py: an overflowing step skipped, the scale backed off, restored on resume),
another precision in the same process, frozen weights in half and back (copies kept only of what half precision
rounds), float16 autocast in sampling, 8-bit AdamW's one-line errors, VAE slicing for large images."""
import importlib
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dbtutor
from dbtutor.core.fileio import load_torch
from dbtutor.models.precision import half_frozen, make_optimizer, restore_frozen

T = importlib.import_module("dbtutor.train")        # the module (dbtutor.train is also the function)


def fp16_as_on_cuda(monkeypatch, tiny_config):
    """trainer.precision=16 on a CPU that counts as CUDA (DBTUTOR_SIMULATE_CUDA=1, dbtutor/core/hooks.py): accelerate's
    GradScaler, autocast in float16 on the CPU, the frozen weights in half. Returns a config maker for it."""
    from dbtutor.core.hooks import SIMULATE_CUDA
    monkeypatch.setenv(SIMULATE_CUDA, "1")
    return lambda **overrides: tiny_config(**{"trainer.precision": "16", **overrides})


def overflow_at(monkeypatch, backward: int):
    """One UNet gradient is inf at the `backward`-th backward pass of the next pipeline train() loads."""
    real = importlib.import_module("dbtutor.models.pipeline").load_pipeline
    count = {"n": 0}

    def load(*a, **k):
        pipe = real(*a, **k)

        def hook(grad):
            count["n"] += 1
            return torch.full_like(grad, float("inf")) if count["n"] == backward else grad
        pipe.unet.conv_in.weight.register_hook(hook)
        return pipe
    monkeypatch.setattr(T, "load_pipeline", load)


@pytest.mark.slow
@pytest.mark.versions
def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off(tiny_config, monkeypatch):
    tiny_config = fp16_as_on_cuda(monkeypatch, tiny_config)
    overflow_at(monkeypatch, 3)
    norms = []
    clip = T.clip_gradients
    monkeypatch.setattr(T, "clip_gradients", lambda acc, params, m: norms.append(float(clip(acc, params, m))))
    cfg = tiny_config(**{"trainer.keep_checkpoints": True})
    res = dbtutor.train(cfg)
    assert [h["skipped"] for h in res.history] == [False, False, True, False]
    assert [h["loss_scale"] for h in res.history] == [65536.0, 65536.0, 32768.0, 32768.0]
    assert all(math.isfinite(h["loss"]) for h in res.history)
    unet = load_file(str(res.output_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in unet.values())
    # clipping saw unscaled gradients: the same size as without loss scaling (65,536x larger if not unscaled)
    assert norms[2] == float("inf") and all(0 < n < 100 for i, n in enumerate(norms) if i != 2), norms
    # the skipped step left AdamW alone (3 updates in 4 steps); the checkpoint holds the scaler's state
    state = load_torch(res.output_dir / "checkpoints" / "step_000004" / "optimizer.pt")
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {3.0}
    assert state["scaler"]["scale"] == 32768.0


@pytest.mark.slow
@pytest.mark.versions
def test_a_resumed_fp16_run_goes_on_with_its_loss_scale(tiny_config, monkeypatch, tmp_path):
    tiny_config = fp16_as_on_cuda(monkeypatch, tiny_config)
    overflow_at(monkeypatch, 2)
    whole = dbtutor.train(tiny_config(**{"output_dir": str(tmp_path / "whole")}))
    keep = {"output_dir": str(tmp_path / "parts"), "trainer.keep_checkpoints": True}
    overflow_at(monkeypatch, 2)
    dbtutor.train(tiny_config(**keep, **{"trainer.max_steps": 2}))
    overflow_at(monkeypatch, 0)                                         # no overflow from here on
    parts = dbtutor.train(tiny_config(**keep))
    scales = [h["loss_scale"] for h in whole.history]
    assert scales == [65536.0, 32768.0, 32768.0, 32768.0]
    assert [h["loss_scale"] for h in parts.history] == scales       # 65,536 again had the scale not been restored
    assert [h["loss"] for h in parts.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)


@pytest.mark.slow
@pytest.mark.versions
def test_another_precision_in_the_same_process(tiny_config, tmp_path):
    """accelerate refuses a second Accelerator with another precision in one process; train() resets its state."""
    runs = {}
    for name, precision in (("a", "32"), ("b", "bf16"), ("c", "32")):
        cfg = tiny_config(**{"trainer.precision": precision, "output_dir": str(tmp_path / name),
                             "trainer.max_steps": 2})
        runs[name] = [h["loss"] for h in dbtutor.train(cfg).history]
    assert runs["c"] == runs["a"]                                   # nothing of the bf16 run is left over
    assert runs["b"] != runs["a"]                                   # and that one did run in bf16


@pytest.mark.slow
@pytest.mark.versions
def test_after_a_non_finite_loss_the_advice_works_in_the_same_process(tiny_config, monkeypatch, capsys):
    """'use trainer.precision=32': the same output_dir continues from the last good checkpoint in float32."""
    real = T.dreambooth_loss
    calls = {"n": 0}

    def nan_at_third(*a, **k):
        calls["n"] += 1
        loss, inst, prior = real(*a, **k)
        return (loss * float("nan"), inst, prior) if calls["n"] == 3 else (loss, inst, prior)
    monkeypatch.setattr(T, "dreambooth_loss", nan_at_third)
    with pytest.raises(dbtutor.TrainingError, match="use trainer.precision=32") as e:
        dbtutor.train(tiny_config(**{"trainer.precision": "bf16"}))
    assert "\n" not in str(e.value)
    monkeypatch.setattr(T, "dreambooth_loss", real)
    capsys.readouterr()
    res = dbtutor.train(tiny_config(**{"trainer.precision": "32"}))
    assert "(step 2)" in capsys.readouterr().out                    # resumed from the checkpoint of step 2
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]


def test_frozen_weights_go_half_on_a_gpu_and_come_back_bit_identical(tiny_config):
    from conftest import make_tiny_pipeline
    from dbtutor.models.lora import add_lora
    for rank in (0, 4):
        cfg = tiny_config(**{"trainer.precision": "16", "model.lora.rank": rank})
        pipe = make_tiny_pipeline()
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        add_lora(cfg, pipe.unet, pipe.text_encoder)
        parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
        before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in parts.items()}
        assert half_frozen(cfg, parts, "cpu") == {}                      # a CPU: nothing changes
        assert half_frozen(tiny_config(), parts, "cuda") == {}           # precision 32: nothing changes
        kept = half_frozen(cfg, parts, "cuda")                           # (only the device's type is read)
        for name, m in parts.items():
            for pname, p in m.named_parameters():
                assert p.dtype == (torch.float32 if p.requires_grad else torch.float16), (rank, name, pname)
        assert any(p.dtype == torch.float16 for p in pipe.unet.parameters()) == bool(rank)   # LoRA's base weights
        restore_frozen(parts, kept)
        for name, m in parts.items():
            after = m.state_dict()
            assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before[name].items()), name


def lora_parts(cfg, round_to=None):
    """A tiny pipeline with LoRA adapters, its VAE and text encoder frozen, every weight first rounded to `round_to`
    (as weights loaded from fp16 files are) unless None. Returns {name: module} for half_frozen."""
    from conftest import make_tiny_pipeline
    from dbtutor.models.lora import add_lora
    pipe = make_tiny_pipeline()
    if round_to is not None:
        for p in pipe.components.values():
            if isinstance(p, torch.nn.Module):
                for w in p.parameters():
                    w.data = w.data.to(round_to).float()
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    add_lora(cfg, pipe.unet, pipe.text_encoder)
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae}


def copies(kept: dict) -> set:
    return {k for k, v in kept.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("precision,round_to,needs_copies", [
    ("16", torch.float16, False),          # SD's fp16 variant loaded in float32, trained in fp16: nothing to keep
    ("16", None, True),                    # float32 weights: each tensor half precision rounds is copied
    ("bf16", torch.bfloat16, False),
    ("bf16", torch.float16, True),         # float16's 10 mantissa bits do not fit bfloat16's 7
])
def test_half_frozen_keeps_a_copy_only_of_weights_half_precision_rounds(tiny_config, precision, round_to,
                                                                        needs_copies):
    from dbtutor.models.precision import HALF, kept_bytes
    cfg = tiny_config(**{"trainer.precision": precision, "model.lora.rank": 4})
    parts = lora_parts(cfg, round_to)
    if not needs_copies:                   # one number off by one float32 step: that tensor alone is copied
        nudged = parts["vae"].encoder.conv_in.weight
        nudged.data[0, 0, 0, 0] = torch.nextafter(nudged.data[0, 0, 0, 0], torch.tensor(2.0))
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in parts.items()}
    kept = half_frozen(cfg, parts, torch.device("cuda"))                # (only the device's type is read)
    frozen = {(n, k) for n, m in parts.items() for k, p in m.named_parameters() if not p.requires_grad}
    assert set(kept) == frozen and len(frozen) > 100
    rounds = {(n, k) for n, k in frozen if not torch.equal(before[n][k].to(HALF[precision]).float(), before[n][k])}
    assert copies(kept) == rounds                                       # exactly those, nothing else
    if needs_copies:
        assert 0.5 * len(frozen) < len(rounds) < len(frozen)            # most (norms' ones and zeros round exactly)
    else:
        assert rounds == {("vae", "encoder.conv_in.weight")}
    assert kept_bytes(kept) == sum(before[n][k].numel() * 4 for n, k in rounds)
    for name, m in parts.items():
        for pname, p in m.named_parameters():
            assert p.dtype == (torch.float32 if p.requires_grad else HALF[precision]), (name, pname)
    restore_frozen(parts, kept)
    for name, m in parts.items():
        after = m.state_dict()
        assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before[name].items()), name


def test_a_cpu_counts_as_cuda_only_when_the_environment_asks(tiny_config, monkeypatch):
    """DBTUTOR_SIMULATE_CUDA=1 (dbtutor/core/hooks.py): a CPU takes the CUDA decisions; a GPU or MPS stays what it is."""
    from dbtutor.core.hooks import SIMULATE_CUDA, device_kind
    from dbtutor.models.pipeline import sampling_dtype
    from dbtutor.models.precision import check_precision
    cfg = tiny_config(**{"trainer.precision": "16", "model.lora.rank": 4})
    for value in (None, "0", "yes"):                                    # only "1" switches it on
        if value is None:
            monkeypatch.delenv(SIMULATE_CUDA, raising=False)
        else:
            monkeypatch.setenv(SIMULATE_CUDA, value)
        assert device_kind("cpu") == "cpu" and sampling_dtype("cpu") == torch.float32
        assert half_frozen(cfg, lora_parts(cfg), "cpu") == {}
        with pytest.raises(dbtutor.ConfigError, match="needs a CUDA GPU"):
            check_precision(cfg, torch.device("cpu"))
    monkeypatch.setenv(SIMULATE_CUDA, "1")
    assert [device_kind(d) for d in ("cpu", torch.device("cpu"), "cuda", "cuda:1", "mps")] == ["cuda"] * 4 + ["mps"]
    assert sampling_dtype("cpu") == torch.float16
    check_precision(cfg, torch.device("cpu"))                           # fp16 training allowed
    parts = lora_parts(cfg)
    assert copies(half_frozen(cfg, parts, "cpu")) and parts["vae"].dtype == torch.float16


def test_sample_autocasts_in_float16_where_a_gpu_would(monkeypatch):
    """pipeline.sample on a CPU counted as CUDA: float16 autocast (on the CPU), for a float32 pipeline and a float16
    one (a notebook's sampling copy); without the hook none."""
    from conftest import make_tiny_pipeline
    from dbtutor.core.hooks import SIMULATE_CUDA
    from dbtutor.models.pipeline import sample
    seen = []
    pipe = make_tiny_pipeline()
    pipe.unet.conv_in.register_forward_pre_hook(
        lambda m, a: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    monkeypatch.delenv(SIMULATE_CUDA, raising=False)
    sample(pipe, "a photo of a ball", [0, 1], num_inference_steps=1)
    assert seen == [None]
    monkeypatch.setenv(SIMULATE_CUDA, "1")
    for dtype in (torch.float32, torch.float16):
        seen.clear()
        images = sample(pipe.to(dtype=dtype), "a photo of a ball", [0, 1], num_inference_steps=1)
        assert seen == [torch.float16] and [im.size for im in images] == [(32, 32)] * 2


def test_8bit_adam_without_bitsandbytes_or_cuda_is_one_line(tiny_config, monkeypatch):
    cfg = tiny_config(**{"optim.use_8bit_adam": True})
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)              # import bitsandbytes -> ImportError
    with pytest.raises(dbtutor.ConfigError, match=r"needs bitsandbytes, which is not installed: pip install "
                                                  r"'dbtutor\[gpu\]'") as e:
        dbtutor.train(cfg)
    assert "\n" not in str(e.value) and not Path(cfg.output_dir).exists()   # before any work
    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=lambda params, **kw: ("AdamW8bit", list(params), kw))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(dbtutor.ConfigError, match="needs a CUDA GPU") as e:
        dbtutor.train(cfg)
    assert "\n" not in str(e.value)
    p = torch.nn.Parameter(torch.zeros(2))
    assert make_optimizer(cfg, [p], "cuda") == ("AdamW8bit", [p], {"lr": cfg.optim.lr, "weight_decay": 0.01})
    assert isinstance(make_optimizer(tiny_config(), [p], "cpu"), torch.optim.AdamW)


def test_large_images_are_decoded_one_at_a_time(monkeypatch):
    """From SLICE_FROM_PX on (here lowered to 64 px, so the tiny model stays fast) the VAE decodes image by image."""
    from conftest import make_tiny_pipeline
    from dbtutor.models import pipeline
    assert pipeline.sampling_dtype("cuda") == torch.float16 and pipeline.sampling_dtype("cpu") == torch.float32
    monkeypatch.setattr(pipeline, "SLICE_FROM_PX", 64)
    pipe = make_tiny_pipeline()
    pipeline.sample(pipe, "a photo of a ball", [0, 1], num_inference_steps=1)
    assert not pipe.vae.use_slicing                                     # 32 px: one batch
    pipe.unet.register_to_config(sample_size=64 // pipe.vae_scale_factor)
    images = pipeline.sample(pipe, "a photo of a ball", [0, 1], num_inference_steps=1)
    assert pipe.vae.use_slicing and images[0].size == (64, 64)
