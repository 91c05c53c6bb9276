"""A damaged base model found when a run starts or resumes stops it in one line before anything is written: the
class images, the latent caches and the run's checkpoints stay byte for byte as they were, and once the model is
whole again the run resumes from its checkpoint. The same for generate-reg and cache, and for a run's own saved
pipeline or LoRA adapters found damaged when the run is extended."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import SUBJECT
from dbtutor import load_config, train
from dbtutor.commands.cli import main
from dbtutor.core.errors import ConfigError

UNET = "unet/diffusion_pytorch_model.safetensors"


def settings(tmp_path, **extra) -> dict:
    s = {"model.pretrained": str(tmp_path / "base"), "output_dir": str(tmp_path / "out"),
         "model.data.instance_dir": str(SUBJECT), "model.data.regularization_dir": str(tmp_path / "reg"),
         "model.data.num_reg_images": 6, "model.data.num_images_per_prompt": 4, "model.data.resolution": 32,
         "model.sampling.num_inference_steps": 2, "trainer.max_steps": 4, "trainer.checkpoint_every": 2,
         "trainer.progress": False, "trainer.device": "cpu"}
    s.update(extra)
    return s


def argv(command, s: dict) -> list[str]:
    return [command] + [f"{k}={v}" for k, v in s.items()]


def snapshot(root: Path, skip=("base",)) -> dict:
    """{file: sha256} of everything under root but the base model."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip}


def cli(args, capsys):
    capsys.readouterr()
    rc = main(args)
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


class Stop(Exception):
    pass


def stop_at(step):
    def callback(rec):
        if rec["step"] == step:
            raise Stop
    return callback


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


DAMAGES = {   # a re-download cut off, a hand copy without the tokenizer, an edited config
    "unet weights cut": (lambda b: truncate(b / UNET), ["unet", UNET, "truncated"]),
    "tokenizer missing": (lambda b: shutil.rmtree(b / "tokenizer"), ["tokenizer", "tokenizer/ is missing"]),
    "unet config edited": (lambda b: (b / "unet/config.json").write_text(
        (b / "unet/config.json").read_text().replace('"block_out_channels": [\n    16,\n    32\n  ]',
                                                     '"block_out_channels": [\n    32,\n    64\n  ]')),
        ["unet/config.json does not fit", "conv_in.weight"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_base_model_at_resume_keeps_class_images_caches_and_checkpoints(damage, tiny_pipeline_dir,
                                                                                   tmp_path, capsys):
    shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    s = settings(tmp_path)
    with pytest.raises(Stop):                           # a run stopped after its checkpoint at step 2
        train(load_config(overrides=s), callback=stop_at(3))
    out = tmp_path / "out"
    assert (out / "checkpoints" / "step_000002").is_dir()
    assert len(list((tmp_path / "reg").glob("class_*.png"))) == 6
    assert list((out / "latents").rglob("*.safetensors"))
    before = snapshot(tmp_path)
    base = (tmp_path / "base").rename(tmp_path / "base-good")
    shutil.copytree(base, tmp_path / "base")
    do, words = DAMAGES[damage]
    do(tmp_path / "base")
    for command in ("train", "generate-reg", "cache"):
        rc, lines = cli(argv(command, s), capsys)
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"dbtutor: error: {tmp_path / 'base'}: "), lines
        assert all(w in lines[0] for w in words), lines[0]
        assert snapshot(tmp_path, skip=("base", "base-good")) == before, command
    shutil.rmtree(tmp_path / "base")                    # the model whole again: the run goes on from its checkpoint
    base.rename(tmp_path / "base")
    res = train(load_config(overrides=s))
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]
    assert all(snapshot(tmp_path)[f] == h for f, h in before.items() if f.startswith("reg/"))


def test_generate_reg_with_a_damaged_base_model_creates_no_class_folder(tiny_pipeline_dir, tmp_path, capsys):
    shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    truncate(tmp_path / "base" / UNET)
    rc, lines = cli(argv("generate-reg", settings(tmp_path)), capsys)
    assert rc == 2 and len(lines) == 1 and "truncated" in lines[0]
    assert not (tmp_path / "reg").exists()             # no folder and no provenance record of a damaged model


@pytest.mark.slow
def test_a_runs_own_damaged_pipeline_when_extended(tiny_pipeline_dir, tmp_path, capsys):
    """A finished run (no checkpoint kept) extended by a step: its saved UNet is cut. One line saying to train
    again; the class images and caches are kept."""
    shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    s = settings(tmp_path, **{"trainer.max_steps": 2, "trainer.checkpoint_every": 0})
    train(load_config(overrides=s))
    truncate(tmp_path / "out" / UNET)
    before = snapshot(tmp_path, skip=("base",))
    rc, lines = cli(argv("train", {**s, "trainer.max_steps": 3}), capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"dbtutor: error: {tmp_path / 'out'}: unet: {UNET} is truncated"), lines[0]
    assert "saved by `dbtutor train`: train it again (trainer.resume=false)" in lines[0]
    after = snapshot(tmp_path, skip=("base",))
    assert {f: h for f, h in after.items() if ".dbtutor.lock" not in f} == \
        {f: h for f, h in before.items() if ".dbtutor.lock" not in f}


@pytest.mark.slow
def test_a_runs_damaged_lora_weights_when_extended(tiny_pipeline_dir, tmp_path, capsys):
    shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    s = settings(tmp_path, **{"trainer.max_steps": 2, "trainer.checkpoint_every": 0, "model.lora.rank": 2,
                              "model.with_prior_preservation": False})
    train(load_config(overrides=s))
    truncate(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    rc, lines = cli(argv("train", {**s, "trainer.max_steps": 3}), capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert "pytorch_lora_weights.safetensors is truncated" in lines[0] and "trainer.resume=false" in lines[0]


def test_check_pretrained_in_preflight_names_the_part(tiny_pipeline_dir, tmp_path):
    from dbtutor.train import preflight
    shutil.copytree(tiny_pipeline_dir, tmp_path / "base")
    (tmp_path / "base" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ConfigError, match="model_index.json describes a StableDiffusionPipeline that lists no unet"):
        preflight(load_config(overrides=settings(tmp_path)))
