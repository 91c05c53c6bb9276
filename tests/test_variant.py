"""model.variant: a model's fp16 files (SD v1.5's 2.1 GB instead of 4.3 GB) are fetched and loaded where it has them,
as float32 all the same on a CPU; a folder without them loads its main weights; every load passes it on."""
import os
import subprocess
import sys

import pytest
import torch

import dbtutor
from conftest import ROOT, fake_hub_cache, make_tiny_pipeline
from dbtutor.core.errors import ConfigError
from dbtutor.models.pipeline import load_pipeline, load_trained

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """'both': seed 0's weights as the main files and seed 1's as the fp16 files (so which were loaded shows);
    'fp16': the fp16 files alone (what a download with variant="fp16" leaves); 'main': no variant files."""
    from dbtutor.models.pipeline import sd_layout
    root = tmp_path_factory.mktemp("variants")
    make_tiny_pipeline(seed=0).save_pretrained(root / "both")
    make_tiny_pipeline(seed=1).to(torch.float16).save_pretrained(root / "both", variant="fp16")
    make_tiny_pipeline(seed=1).to(torch.float16).save_pretrained(root / "fp16", variant="fp16")
    make_tiny_pipeline(seed=0).save_pretrained(root / "main")
    for name in ("both", "fp16", "main"):
        sd_layout(root / name)
    return root


def weights(pipe) -> dict:
    return {n: next(getattr(pipe, n).parameters()).detach().clone() for n in PARTS}


def test_the_variant_files_are_loaded_where_they_are_and_stay_float32(folders):
    main, fp16 = weights(make_tiny_pipeline(seed=0)), weights(make_tiny_pipeline(seed=1).to(torch.float16))
    got = weights(load_pipeline(folders / "both", variant="fp16"))
    for n in PARTS:
        assert got[n].dtype == torch.float32 and torch.equal(got[n], fp16[n].float()), n
    got = weights(load_pipeline(folders / "both"))                       # no variant: the main files (transformers 5
    for n in PARTS:                                                      # reads the text encoder in the dtype its
        assert (got[n] - main[n]).abs().max() < 1e-3 < (got[n] - fp16[n]).abs().max(), n   # config.json last saw)
    got = weights(load_pipeline(folders / "fp16", variant="fp16"))
    assert all(got[n].dtype == torch.float32 and torch.equal(got[n], fp16[n].float()) for n in PARTS)


def test_a_folder_without_the_variant_loads_its_main_weights(folders):
    got = weights(load_pipeline(folders / "main", variant="fp16"))
    assert all(torch.equal(got[n], weights(make_tiny_pipeline(seed=0))[n]) for n in PARTS)
    assert dbtutor.check_model(folders / "main", variant="fp16") == folders / "main"


def test_variant_files_alone_without_model_variant_are_one_line(folders):
    with pytest.raises(ConfigError) as e:
        load_pipeline(folders / "fp16")
    msg = str(e.value)
    assert "\n" not in msg and "holds only" in msg and "the fp16 variant" in msg and "set model.variant=fp16" in msg


def test_model_variant_is_checked_and_not_a_training_key(tmp_path):
    from dbtutor.runs.same_run import training_config
    cfg = dbtutor.load_config(overrides={"model.variant": "fp16", "output_dir": str(tmp_path)})
    assert cfg.model.variant == "fp16" and "model.variant" not in training_config(cfg)
    assert dbtutor.load_config(overrides=["model.variant=None", f"output_dir={tmp_path}"]).model.variant is None
    with pytest.raises(ConfigError, match="model.variant=fp16/x must be null"):
        dbtutor.load_config(overrides={"model.variant": "fp16/x", "output_dir": str(tmp_path)})


def test_a_hub_id_is_downloaded_in_the_variant(folders, monkeypatch):
    """locate() asks diffusers' download for the variant's files (here stood in for: no network)."""
    from diffusers import StableDiffusionPipeline
    asked = []

    def download(repo, **kwargs):
        asked.append((repo, kwargs.get("variant")))
        return str(folders / "fp16")
    monkeypatch.setattr(StableDiffusionPipeline, "download", download)
    pipe = load_pipeline("someone/some-sd", variant="fp16")
    assert asked and set(asked) == {("someone/some-sd", "fp16")}
    assert pipe.unet.dtype == torch.float32


def test_a_lora_run_loads_its_base_model_in_the_variant_it_trained_with(folders, tiny_config, tmp_path):
    """load_trained (dbtutor sample, eval) reads model.variant from the run's dreambooth.yaml."""
    cfg = tiny_config(**{"model.pretrained": str(folders / "both"), "model.variant": "fp16", "model.lora.rank": 2,
                         "model.lora.save_merged": False, "trainer.max_steps": 1, "trainer.checkpoint_every": 0,
                         "model.data.num_reg_images": 2, "model.sampling.card_seeds": 0,
                         "trainer.validation.every": 0})
    res = dbtutor.train(cfg)
    assert not (res.output_dir / "unet").exists()
    got = weights(load_trained(res.output_dir))
    fp16 = weights(make_tiny_pipeline(seed=1).to(torch.float16))
    assert torch.equal(got["vae"], fp16["vae"].float())                 # the base model's fp16 files, as trained


@pytest.mark.slow
@pytest.mark.versions
@pytest.mark.skipif(os.name == "nt", reason="the fake cache uses symbolic links")
def test_a_hub_ids_cached_fp16_download_loads_offline(folders, tmp_path):
    """As a download with variant="fp16" leaves the Hugging Face cache (the fp16 files alone), read offline by
    another process: loads with model.variant=fp16, in float32 on a CPU."""
    fake_hub_cache(tmp_path / "hf", folders / "fp16", "dbtutor-test/tiny-sd-fp16")
    code = ("import torch; from dbtutor.models.pipeline import load_pipeline\n"
            "p = load_pipeline('dbtutor-test/tiny-sd-fp16', variant='fp16')\n"
            "print(sorted({str(next(getattr(p, n).parameters()).dtype) for n in ('unet', 'vae', 'text_encoder')}))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "['torch.float32']"


def test_the_stock_load_of_a_notebook_asks_for_the_variant_only_where_diffusers_finds_it(folders):
    """07 loads the base model with diffusers' own from_pretrained(variant=stock_variant(...)): newer diffusers
    refuses a variant a folder has no files of, and a hub id was fetched in it."""
    from diffusers import StableDiffusionPipeline

    from dbtutor.models.model_source import stock_variant
    assert stock_variant("someone/some-sd", "fp16") == "fp16" and stock_variant("someone/some-sd", None) is None
    assert stock_variant(folders / "both", "fp16") == "fp16" and stock_variant(folders / "main", "fp16") is None
    for name in ("both", "fp16", "main"):
        pipe = StableDiffusionPipeline.from_pretrained(folders / name, variant=stock_variant(folders / name, "fp16"),
                                                       safety_checker=None, requires_safety_checker=False)
        assert pipe.unet is not None
