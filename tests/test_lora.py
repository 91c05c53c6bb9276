"""LoRA DreamBooth: stock diffusers loads the adapters, they change the samples and reproduce dbtutor's own; resume."""
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import dbtutor
from dbtutor.models.lora import WEIGHT_NAME, load_lora

PROMPTS = ["a photo of sks ball", "a photo of a ball"]


def render(pipe) -> np.ndarray:
    """Images as float arrays, from fixed initial latents (seeds 0, 1), 3 DDIM steps, guidance 5."""
    from diffusers import DDIMScheduler
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=3, guidance_scale=5.0, latents=latents, output_type="np").images


def lora_cfg(tiny_config, **kw):
    return tiny_config(**{"model.lora.rank": 4, "model.lora.alpha": 8, "optim.lr": 1e-2, "optim.warmup_steps": 0,
                          **kw})


@pytest.mark.parametrize("train_text_encoder", [False, True])
@pytest.mark.slow
@pytest.mark.versions
def test_stock_diffusers_loads_the_adapters(tiny_config, tiny_pipeline_dir, train_text_encoder):
    res = dbtutor.train(lora_cfg(tiny_config, **{"model.train_text_encoder": train_text_encoder}))
    out = res.output_dir
    layers = load_file(str(out / WEIGHT_NAME))
    assert all("lora" in k for k in layers) and any(k.startswith("unet.") for k in layers)
    assert any(k.startswith("text_encoder.") for k in layers) == train_text_encoder

    base = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    base_images = render(base)
    if train_text_encoder:
        load_lora(base, out)          # stock load_lora_weights; its text-encoder half via peft where transformers
    else:                             # refuses the installed peft (transformers 5.24 wants peft >= 0.22)
        # the stock LoRA workflow: the base model + the adapters (alpha 8 != rank 4); weight_name, as the model card
        # says: without it diffusers 0.30 refuses to load when offline (HF_HUB_OFFLINE=1)
        base.load_lora_weights(out, weight_name=WEIGHT_NAME)
    loaded = render(base)
    own = render(res.pipe)                                         # what dbtutor trained (returned fused)
    fused = render(StableDiffusionPipeline.from_pretrained(out))   # the output folder alone
    change = np.abs(own - base_images).max()
    assert change > 0.05, change                                   # the adapters do change the samples
    assert np.abs(loaded - own).max() < 1e-4                       # ... and reproduce dbtutor's own
    assert np.abs(fused - own).max() < 1e-5


@pytest.mark.slow
@pytest.mark.versions
def test_lora_checkpoints_hold_only_adapters_and_resume(tiny_config, tmp_path):
    keep = {"trainer.keep_checkpoints": True, "model.train_text_encoder": True}   # adapters in both parts
    dbtutor.train(lora_cfg(tiny_config, output_dir=str(tmp_path / "whole"), **keep))
    ckpt = tmp_path / "whole" / "checkpoints" / "step_000004"
    for part, full in (("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors")):
        saved = load_file(str(ckpt / f"{part}.safetensors"))
        assert saved and all("lora_" in k for k in saved)
        assert (ckpt / f"{part}.safetensors").stat().st_size < (tmp_path / "whole" / full).stat().st_size / 2

    # 3 steps, then the same run resumed to 4 (max_steps may change on resume; the lr schedule is constant)
    dbtutor.train(lora_cfg(tiny_config, output_dir=str(tmp_path / "broken"), **{"trainer.max_steps": 3}, **keep))
    assert (tmp_path / "broken" / "checkpoints" / "step_000003" / "state.json").exists()
    resumed = dbtutor.train(lora_cfg(tiny_config, output_dir=str(tmp_path / "broken"), **keep))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a, b = load_file(str(tmp_path / "whole" / WEIGHT_NAME)), load_file(str(tmp_path / "broken" / WEIGHT_NAME))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k or ".up." in k) > 1e-3   # B moved from zero


@pytest.mark.slow
def test_a_finished_lora_run_continues_from_its_saved_adapters(tiny_config, tmp_path, capsys):
    """Without a kept checkpoint the adapters come back from pytorch_lora_weights.safetensors (alpha / r taken out of
    B again): exactly the adapter tensors the same run's checkpoint holds."""
    from dbtutor.models.lora import add_lora, adapter_state, load_saved_adapters
    from dbtutor.models.pipeline import load_pipeline
    te = {"model.train_text_encoder": True, "trainer.max_steps": 3}
    dbtutor.train(lora_cfg(tiny_config, output_dir=str(tmp_path / "kept"), **te, **{"trainer.keep_checkpoints": True}))
    cfg = lora_cfg(tiny_config, output_dir=str(tmp_path / "run"), **te)
    dbtutor.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    pipe = load_pipeline(cfg.model.pretrained)
    add_lora(cfg, pipe.unet, pipe.text_encoder)
    for part in ("unet", "text_encoder"):
        load_saved_adapters(getattr(pipe, part), tmp_path / "run", part)
        got = adapter_state(getattr(pipe, part))
        want = load_file(str(tmp_path / "kept" / "checkpoints" / "step_000003" / f"{part}.safetensors"))
        assert got.keys() == want.keys()
        assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-6
    capsys.readouterr()
    longer = dbtutor.train(lora_cfg(tiny_config, output_dir=str(tmp_path / "run"), **{**te, "trainer.max_steps": 4}))
    assert "fresh optimizer state" in capsys.readouterr().out
    assert [h["step"] for h in longer.history] == [1, 2, 3, 4]


def test_full_fine_tuning_writes_no_adapters(tiny_config):
    cfg = tiny_config(**{"trainer.max_steps": 1, "trainer.checkpoint_every": 0})
    Path(cfg.output_dir).mkdir(parents=True)
    (Path(cfg.output_dir) / WEIGHT_NAME).write_bytes(b"from an earlier LoRA run")
    res = dbtutor.train(cfg)
    assert not (res.output_dir / WEIGHT_NAME).exists()


@pytest.mark.slow
def test_a_lora_run_can_be_saved_as_its_adapters_alone(tiny_config, tmp_path, capsys):
    """model.lora.save_merged=false: the run folder holds the adapters, history.json and dreambooth.yaml (no merged
    pipeline); the returned pipeline, the base + the adapters, and a rerun that finds the run all draw alike."""
    cfg = lora_cfg(tiny_config, output_dir=str(tmp_path / "run"), **{"model.lora.save_merged": False})
    res = dbtutor.train(cfg)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {WEIGHT_NAME, "history.json", "dreambooth.yaml"}
    assert not (out / "model_index.json").exists() and not (out / "unet").exists()
    base = StableDiffusionPipeline.from_pretrained(cfg.model.pretrained)
    base.load_lora_weights(out, weight_name=WEIGHT_NAME)
    own = render(res.pipe)
    assert np.abs(render(base) - own).max() < 1e-4
    capsys.readouterr()
    again = dbtutor.train(cfg)                                     # found: nothing to train
    assert "nothing to train" in capsys.readouterr().out and not again.saved
    assert np.abs(render(again.pipe) - own).max() < 1e-5
    from dbtutor.models.pipeline import load_trained                      # what `dbtutor sample` and `eval` load
    assert np.abs(render(load_trained(out)) - own).max() < 1e-4
    from dbtutor.commands.cli import main
    args = [f"{k}={v}" for k, v in (("model.pretrained", cfg.model.pretrained), ("output_dir", out),
                                    ("model.data.instance_dir", cfg.model.data.instance_dir))]
    assert main(["sample", "--num", "1", "--out", str(tmp_path / "s.png"), *args]) == 0
    assert (tmp_path / "s.png").exists()
