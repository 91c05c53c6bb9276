"""The CUDA path of training taken on a CPU (DBTUTOR_SIMULATE_CUDA=1, dbtutor/core/hooks.py), for LoRA and full
fine-tuning with trainer.precision=16: frozen weights in half, accelerate's GradScaler and gradient clipping, float16
autocast in the training step, in validation and for the class images; trainable weights float32 throughout; the
pipeline saved in float32 with its frozen parts bit-identical to the base model's. Negative controls show that each
check can fail: without the hook, and with the trainable weights in half."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dbtutor
from dbtutor.core.hooks import SIMULATE_CUDA
from dbtutor.models.precision import kept_bytes

T = importlib.import_module("dbtutor.train")        # the module (dbtutor.train is also the function)
PARTS = ("unet", "text_encoder", "vae")
STEPS = 4


class Spy:
    """What one train() call did: the pipeline it loaded, what half_frozen kept, the weights just after
    restore_frozen, the autocast state of every UNet call (made with or without gradients), accelerate's
    clip_grad_norm_ calls, and (as train()'s callback) any weight of the wrong dtype after each step."""

    def __init__(self, monkeypatch):
        from accelerate import Accelerator
        self.pipe, self.kept, self.restored, self.calls, self.clips, self.wrong = None, None, None, [], 0, []
        load, half, restore, clip = T.load_pipeline, T.half_frozen, T.restore_frozen, Accelerator.clip_grad_norm_

        def loaded(*a, **k):
            self.pipe = load(*a, **k)
            self.pipe.unet.conv_in.register_forward_pre_hook(self.unet_call)
            return self.pipe

        def halved(cfg, parts, device):
            self.kept = half(cfg, parts, device)
            return self.kept

        def restored(parts, kept):
            restore(parts, kept)
            self.restored = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in parts.items()}

        def clipped(accelerator, *a, **k):
            self.clips += 1
            return clip(accelerator, *a, **k)
        monkeypatch.setattr(T, "load_pipeline", loaded)
        monkeypatch.setattr(T, "half_frozen", halved)
        monkeypatch.setattr(T, "restore_frozen", restored)
        monkeypatch.setattr(Accelerator, "clip_grad_norm_", clipped)

    def unet_call(self, module, args):
        on = torch.is_autocast_enabled("cpu")
        self.calls.append((torch.is_grad_enabled(), torch.get_autocast_dtype("cpu") if on else None))

    def step(self, rec):
        for name in PARTS:
            for pname, p in getattr(self.pipe, name).named_parameters():
                want = torch.float32 if p.requires_grad else torch.float16
                if p.dtype != want:
                    self.wrong.append((rec["step"], name, pname, p.dtype))


def one_layout(state: dict) -> dict:
    """Tensor names without the text encoder's `text_model.` (transformers 4.x keeps it in state_dict, 5.x and
    the saved files' SD layout do not; LoRA's `.base_layer` as the plain layer)."""
    return {k.replace(".base_layer", "").removeprefix("text_model."): v for k, v in state.items()}


def base_state(folder) -> dict:
    pipe = dbtutor.load_pipeline(str(folder))
    return {n: one_layout(getattr(pipe, n).state_dict()) for n in PARTS}


def saved_tensors(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): load_file(str(p)) for p in folder.rglob("*.safetensors")
            if "checkpoints" not in p.parts}


@pytest.fixture(scope="module")
def fp16_pipeline_dir(tmp_path_factory) -> Path:
    """The tiny pipeline saved in float16, as Stable Diffusion v1.5's fp16 variant is."""
    from conftest import make_tiny_pipeline
    from dbtutor.models.pipeline import sd_layout
    path = tmp_path_factory.mktemp("tiny_sd_fp16")
    make_tiny_pipeline().to(torch.float16).save_pretrained(path, safe_serialization=True)
    sd_layout(path)
    return path


@pytest.mark.slow
@pytest.mark.versions
@pytest.mark.parametrize("rank,base", [(0, "fp32"), (4, "fp32"), (4, "fp16")],
                         ids=["full-fp32-weights", "lora-fp32-weights", "lora-fp16-weights"])
def test_training_takes_the_cuda_path(rank, base, tiny_config, tiny_pipeline_dir, fp16_pipeline_dir, monkeypatch):
    monkeypatch.setenv(SIMULATE_CUDA, "1")
    folder = tiny_pipeline_dir if base == "fp32" else fp16_pipeline_dir
    spy = Spy(monkeypatch)
    cfg = tiny_config(**{"model.pretrained": str(folder), "trainer.precision": "16", "model.lora.rank": rank,
                         "trainer.validation.every": 2})
    res = dbtutor.train(cfg, callback=spy.step)

    # fp16 loss scaling: a scale on every record, no step skipped; accelerate's clipping (unscaled) at every step
    assert [(h["loss_scale"], h["skipped"]) for h in res.history] == [(65536.0, False)] * STEPS
    assert spy.clips == STEPS
    # every UNet call under float16 autocast: the training steps, the class images and the validations
    assert sum(grad for grad, _ in spy.calls) == STEPS and len(spy.calls) > STEPS
    assert {dtype for _, dtype in spy.calls} == {torch.float16}
    # trainable weights float32, frozen ones float16, at every step; with LoRA the UNet's base weights too
    assert spy.wrong == []
    frozen = {n for n, _ in spy.kept}
    assert frozen == ({"unet", "text_encoder", "vae"} if rank else {"text_encoder", "vae"})
    # copies only of what float16 rounds: none for fp16 files
    assert (kept_bytes(spy.kept) > 0) == (base == "fp32")
    # the frozen weights put back bit-identical to the base model's (LoRA: the UNet's base under the adapters)
    before = base_state(folder)
    for name in sorted(frozen):
        after = one_layout({k: v for k, v in spy.restored[name].items() if "lora_" not in k})
        assert after.keys() == before[name].keys()
        assert all(v.dtype == torch.float32 and torch.equal(v, before[name][k]) for k, v in after.items()), name
    # validation samples at steps 0, 2, 4
    assert sorted(p.name for p in (res.output_dir / "validation").glob("step_*.png")) == \
        ["step_000000.png", "step_000002.png", "step_000004.png"]
    # the saved pipeline: float32 throughout, its frozen parts as loaded
    saved = saved_tensors(res.output_dir)
    assert saved and all(t.dtype == torch.float32 for f in saved.values() for t in f.values())
    for name in ("text_encoder", "vae"):
        (file,) = [f for k, f in saved.items() if k.startswith(name + "/")]
        file = one_layout(file)
        assert file.keys() == before[name].keys() and all(torch.equal(t, before[name][k]) for k, t in file.items())
    assert all(p.dtype == torch.float32 for n in PARTS for p in getattr(res.pipe, n).parameters())


@pytest.mark.slow
@pytest.mark.versions
def test_without_the_hook_the_cpu_path_is_taken(tiny_config, monkeypatch):
    """Negative control: the spies see the difference. fp16 is refused on a CPU; at 32, no GradScaler, the CPU's
    clipping, no autocast in training, no halved weights."""
    monkeypatch.delenv(SIMULATE_CUDA, raising=False)
    with pytest.raises(dbtutor.ConfigError, match="trainer.precision=16 needs a CUDA GPU"):
        dbtutor.train(tiny_config(**{"trainer.precision": "16", "model.lora.rank": 4}))
    spy = Spy(monkeypatch)
    res = dbtutor.train(tiny_config(**{"model.lora.rank": 4}), callback=spy.step)
    assert "loss_scale" not in res.history[0] and spy.clips == 0 and spy.kept == {}
    assert {dtype for grad, dtype in spy.calls if grad} == {None}
    assert spy.wrong                                        # the frozen weights stayed float32


@pytest.mark.slow
@pytest.mark.versions
def test_trainable_weights_in_half_stop_the_scaler(tiny_config, monkeypatch):
    """Negative control: were half_frozen to halve the adapters too, accelerate's GradScaler refuses to unscale
    their gradients (so the float32 check above guards something real)."""
    monkeypatch.setenv(SIMULATE_CUDA, "1")
    real = T.half_frozen

    def everything_half(cfg, parts, device):
        kept = real(cfg, parts, device)
        for p in parts["unet"].parameters():
            p.data = p.data.half()
        return kept
    monkeypatch.setattr(T, "half_frozen", everything_half)
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        dbtutor.train(tiny_config(**{"trainer.precision": "16", "model.lora.rank": 4}))
