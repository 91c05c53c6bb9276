"""`dbtutor export`: a run as one file in Stable Diffusion's original layout (or a kohya LoRA) that diffusers loads
back and draws the same images with; other architectures refused in one line."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import dbtutor
from dbtutor.core.errors import ConfigError, DataError
from dbtutor.sharing.export import NotStableDiffusion, export
from dbtutor.models.lora import WEIGHT_NAME, load_lora

from conftest import ROOT, SUBJECT, card_code

PROMPTS = ["a photo of sks ball", "a photo of a ball"]
# the published SD v1.5 checkpoint has these many UNet and VAE tensors; the small variant has the same names
SD15_COUNTS = {"model.diffusion_model.": 686, "first_stage_model.": 248}


def render(pipe) -> np.ndarray:
    """Images as float arrays, from fixed initial latents (seeds 0, 1), 3 DDIM steps, guidance 5."""
    from diffusers import DDIMScheduler
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=3, guidance_scale=5.0, latents=latents, output_type="np").images


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory) -> Path:
    from dbtutor.models.sd15 import save_random_pipeline
    folder = tmp_path_factory.mktemp("sd15") / "base"
    save_random_pipeline(folder, dtype="fp32", size="small")
    return folder


@pytest.fixture(scope="module")
def sd15_run(sd15_dir, tmp_path_factory):
    """Train a few steps on the small SD v1.5 layout; returns make(name, **overrides) -> output_dir."""
    work, done = tmp_path_factory.mktemp("runs"), {}

    def make(name, **overrides):
        if name in done:
            return done[name]
        cfg = dbtutor.load_config(overrides={
            "model.pretrained": str(sd15_dir), "output_dir": str(work / name), "model.data.instance_dir": str(SUBJECT),
            "model.data.regularization_dir": str(work / "reg"), "model.data.num_reg_images": 4,
            "model.data.num_images_per_prompt": 4, "model.data.resolution": 64, "model.sampling.num_inference_steps": 2,
            "trainer.max_steps": 3, "trainer.checkpoint_every": 0, "trainer.progress": False, "optim.lr": 1e-3,
            "optim.warmup_steps": 0, **overrides})
        done[name] = dbtutor.train(cfg).output_dir
        return done[name]
    return make


@pytest.mark.slow
@pytest.mark.versions
def test_full_run_exports_a_checkpoint_that_diffusers_loads_and_draws_alike(sd15_run, sd15_dir, tmp_path):
    run = sd15_run("full", **{"model.train_text_encoder": True})
    out = tmp_path / "sks_ball.safetensors"
    res = export(run, out)
    assert res["kind"] == "checkpoint" and out.exists()
    state = load_file(str(out))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in state)
    for prefix, n in SD15_COUNTS.items():
        assert sum(k.startswith(prefix) for k in state) == n
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4          # SD's VAE: 1x1 convolutions
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in state             # up_blocks.0's upsampler

    own = render(StableDiffusionPipeline.from_pretrained(run))
    base = render(StableDiffusionPipeline.from_pretrained(sd15_dir))
    assert np.abs(own - base).max() > 1e-3                                             # training changed the model
    single = StableDiffusionPipeline.from_single_file(str(out), config=str(run))       # the documented command
    assert np.abs(render(single) - own).max() <= 1e-4

    half = export(run, tmp_path / "half.safetensors", half=True)
    hstate = load_file(str(half["path"]))
    assert hstate.keys() == state.keys() and all(v.dtype == torch.float16 for v in hstate.values())
    assert half["bytes"] < 0.6 * res["bytes"]
    loaded = StableDiffusionPipeline.from_single_file(str(half["path"]), config=str(run), torch_dtype=torch.float32)
    assert np.abs(render(loaded) - own).max() < 0.05                                   # fp16 rounding only


@pytest.mark.slow
@pytest.mark.versions
@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_lora_run_exports_a_kohya_file_that_load_lora_weights_draws_alike(sd15_run, sd15_dir, tmp_path,
                                                                           train_text_encoder):
    run = sd15_run(f"lora_{train_text_encoder}", **{"model.lora.rank": 4, "model.lora.alpha": 8, "optim.lr": 1e-2,
                                                    "model.train_text_encoder": train_text_encoder})
    out = tmp_path / "sks_ball_lora.safetensors"
    assert export(run, out)["kind"] == "lora"
    state = load_file(str(out))
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    assert all(m.startswith(("lora_unet_", "lora_te_text_model_")) for m in modules)
    assert any(m.startswith("lora_te_") for m in modules) == train_text_encoder
    for m in modules:                                 # kohya's three tensors per module, alpha = rank (scale folded)
        assert state[f"{m}.lora_down.weight"].shape[0] == 4 and float(state[f"{m}.alpha"]) == 4.0
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0" in modules

    own = StableDiffusionPipeline.from_pretrained(sd15_dir)
    load_lora(own, run)                               # the run's own adapters on the base model
    own_images = render(own)
    stock = StableDiffusionPipeline.from_pretrained(sd15_dir)
    stock.load_lora_weights(str(tmp_path), weight_name=out.name)      # stock diffusers reads kohya's layout
    assert np.abs(render(stock) - own_images).max() <= 1e-3
    assert np.abs(own_images - render(StableDiffusionPipeline.from_pretrained(sd15_dir))).max() > 1e-2


@pytest.mark.slow
@pytest.mark.versions
def test_sd2_layout_exports_openclip_keys_and_round_trips(tmp_path):
    """SD 2.x: an OpenCLIP text encoder (GELU), written as cond_stage_model.model.* with q, k, v joined."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dbtutor.models.pipeline import sd_layout
    from dbtutor.models.sd15 import SCHEDULER_CONFIG, configs, load_tokenizer
    c = configs("small")
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**{**c["unet"], "use_linear_projection": True, "attention_head_dim": (2, 4, 8, 8)}),
        vae=AutoencoderKL(**c["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**{**c["text_encoder"], "hidden_act": "gelu"})),
        tokenizer=load_tokenizer(), scheduler=PNDMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    run = tmp_path / "sd2"
    pipe.save_pretrained(run, safe_serialization=True)
    sd_layout(run)
    export(run, tmp_path / "sd2.safetensors")
    state = load_file(str(tmp_path / "sd2.safetensors"))
    assert state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state)
    single = StableDiffusionPipeline.from_single_file(str(tmp_path / "sd2.safetensors"), config=str(run))
    assert np.abs(render(single) - render(StableDiffusionPipeline.from_pretrained(run))).max() <= 1e-4


def sd_adapters(rank: int = 2, text_encoder: bool = True) -> dict:
    """Adapters in the layout save_lora writes (diffusers' format: the UNet's .lora.down/.up, the text encoder's
    .lora_linear_layer.down/.up), one attention projection in each of SD's 16 attention blocks, two in the text
    encoder (layers 1 and 10: their kohya names sort differently from their diffusers names)."""
    from dbtutor.sharing.export import SD_ATTENTIONS
    g, out = torch.Generator().manual_seed(0), {}
    for block in sorted(SD_ATTENTIONS):
        for half, shape in (("down", (rank, 8)), ("up", (8, rank))):
            out[f"unet.{block}.transformer_blocks.0.attn1.to_q.lora.{half}.weight"] = torch.randn(shape, generator=g)
    for layer in (1, 10) if text_encoder else ():
        for half, shape in (("down", (rank, 8)), ("up", (8, rank))):
            out[f"text_encoder.text_model.encoder.layers.{layer}.self_attn.q_proj.lora_linear_layer.{half}.weight"] = \
                torch.randn(shape, generator=g)
    return out


@pytest.mark.parametrize("text_encoder", [False, True])
def test_the_kohya_file_is_kohyas_sd_layout(text_encoder):
    """Each module's kohya name is its diffusers path with underscores under lora_unet_ / lora_te_ (kohya's SD 1.x
    and 2.x prefix), lora_down = the adapter's down half, lora_up = its up half (alpha / r folded in), alpha = rank
    as a float32 scalar: 1.0 x folded weights, what the run's own adapters compute."""
    from dbtutor.sharing.export import kohya_state
    adapters = sd_adapters(rank=2, text_encoder=text_encoder)
    state = kohya_state("run", adapters)
    want = {}
    for k, v in adapters.items():
        module, half = re.fullmatch(r"(.+?)\.(?:lora|lora_linear_layer)\.(down|up)\.weight", k).groups()
        part, _, path = module.partition(".")
        name = ("lora_unet_" if part == "unet" else "lora_te_") + path.replace(".", "_")
        want[f"{name}.lora_{half}.weight"] = v
        want[f"{name}.alpha"] = torch.tensor(2.0)
    assert state.keys() == want.keys()
    for k, v in want.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k


def test_what_diffusers_conversion_lacks_for_sd1(tmp_path):
    """The gap export.kohya_state fills over diffusers' conversion: its text-encoder names are SDXL's first encoder's
    (lora_te1_; kohya's sd-scripts name SD 1.x/2.x's encoder lora_te_, as AUTOMATIC1111 and ComfyUI read it) and its
    alpha an integer (kohya's files hold a float). Both halves of the assumption it makes: alpha = rank."""
    from diffusers.utils import (convert_all_state_dict_to_peft, convert_state_dict_to_kohya,
                                 convert_unet_state_dict_to_peft)

    from dbtutor.sharing.export import kohya_state
    adapters = sd_adapters(rank=2)
    stock = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(convert_unet_state_dict_to_peft(adapters)))
    ours = kohya_state("run", adapters)
    te = sorted(k for k in stock if "_text_model_" in k)
    assert te and all(k.startswith("lora_te1_") for k in te), "diffusers now names the SD text encoder otherwise: " \
                                                               "drop the renaming in export.kohya_state"
    assert {"lora_te_" + k[len("lora_te1_"):] for k in te} == {k for k in ours if "_text_model_" in k}
    alphas = [v for k, v in stock.items() if k.endswith(".alpha")]
    assert alphas and all(not v.is_floating_point() and int(v) == 2 for v in alphas)    # rank, as an integer
    assert {k for k in stock if not k.startswith("lora_te1_")} == {k for k in ours if not k.startswith("lora_te_")}
    for k, v in stock.items():                        # the rest is the library's, tensor for tensor
        if not k.endswith(".alpha") and not k.startswith("lora_te1_"):
            assert torch.equal(ours[k], v), k
    with pytest.raises(DataError, match="lacks its up half"):
        kohya_state("run", {k: v for k, v in adapters.items() if not k.endswith("to_q.lora.up.weight")
                            or "mid_block" not in k})
    with pytest.raises(DataError, match="is not one dbtutor writes"):
        kohya_state("run", {**adapters, "unet.conv_in.hada_w1_a": torch.zeros(1)})


def test_other_architectures_are_refused_in_one_line(tiny_config, tmp_path):
    toy = ROOT / "data" / "models" / "toyworld"
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"an earlier export")
    with pytest.raises(NotStableDiffusion) as e:
        export(toy, out)
    msg = str(e.value)
    assert "\n" not in msg and "not Stable Diffusion 1.x/2.x's architecture" in msg
    assert "from_pretrained" in msg and "UNet 3 x 1" in msg
    assert out.read_bytes() == b"an earlier export"                                    # nothing written
    lora = dbtutor.train(tiny_config(**{"model.lora.rank": 2, "trainer.max_steps": 1, "trainer.checkpoint_every": 0}))
    with pytest.raises(NotStableDiffusion, match="attention blocks"):                  # the tiny UNet's adapters
        export(lora.output_dir, out)
    from dbtutor.sharing.export import convert_text_encoder, convert_unet
    with pytest.raises(NotStableDiffusion, match=r"UNet weight mystery\.weight has no place"):
        convert_unet("run", {"conv_in.weight": torch.zeros(1), "mystery.weight": torch.zeros(1)})
    with pytest.raises(NotStableDiffusion, match="text_projection.weight has no place in CLIP's layout"):
        convert_text_encoder("run", {"text_projection.weight": torch.zeros(1)}, "v1")
    with pytest.raises(DataError, match="neither a trained pipeline"):
        export(tmp_path, out)
    with pytest.raises(ConfigError, match=r"\.safetensors"):
        export(toy, tmp_path / "x.ckpt")


def test_cli_export_writes_atomically(sd15_run, tmp_path, capsys):
    """Killed just before the rename, the earlier file at --out is intact; the command line then writes the file."""
    from dbtutor.commands.cli import main
    run = sd15_run("full", **{"model.train_text_encoder": True})
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier export")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DBTUTOR_FAULT": "atomic:1"}
    cmd = [sys.executable, "-m", "dbtutor", "export", str(run), "--out", str(out), "--half"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode != 0
    assert out.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [out.name]   # its temp is hidden
    assert main(["export", str(run), "--out", str(out), "--half"]) == 0
    assert "a Stable Diffusion checkpoint" in capsys.readouterr().out and len(load_file(str(out))) > 900


OFFLINE_SCRIPT = """
import os, sys
out = os.getcwd()
for i, (folder, code) in enumerate(zip(sys.argv[1::2], sys.argv[2::2])):
    os.chdir(folder)                                  # where the card says to run it: the run's folder
    exec(code, {})
    os.replace("sample.png", os.path.join(out, f"{i}.png"))
"""


@pytest.mark.slow
@pytest.mark.versions
def test_what_the_card_says_works_offline(sd15_run, tmp_path):
    """The model card's loading code for a LoRA and a full run, and the export command and from_single_file line it
    gives, run as the card says (in the run's folder; the full run moved elsewhere first), with HF_HUB_OFFLINE=1
    (diffusers 0.30 refuses load_lora_weights(folder) offline without weight_name), in fresh processes: each draws
    what dbtutor draws from the run. The cards name no folder of this machine."""
    import shutil

    from PIL import Image

    from dbtutor.models.pipeline import load_pipeline, sample
    lora = sd15_run("lora_True", **{"model.lora.rank": 4, "model.lora.alpha": 8, "optim.lr": 1e-2,
                                    "model.train_text_encoder": True})
    full = shutil.copytree(sd15_run("full", **{"model.train_text_encoder": True}), tmp_path / "moved" / "full")
    for run in (lora, full):
        text = (run / "README.md").read_text()
        assert not any(str(p) in text for p in (tmp_path, lora.parent, full.parent, ROOT)), run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    export_line = re.search(r"```bash\n(dbtutor export .*?)\s+#", (full / "README.md").read_text())[1]
    assert export_line == "dbtutor export . --out sks_ball.safetensors"
    done = subprocess.run([sys.executable, "-m", *export_line.split()], cwd=full, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and (full / "sks_ball.safetensors").exists(), done.stderr[-2000:]
    single = re.search(r"`(StableDiffusionPipeline\.from_single_file\(.*?\))`", (full / "README.md").read_text())[1]
    assert single == "StableDiffusionPipeline.from_single_file('sks_ball.safetensors', config='.')"
    single_code = card_code(full).replace("StableDiffusionPipeline.from_pretrained('.')", single)
    assert single_code != card_code(full)
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(lora), card_code(lora), str(full),
                           card_code(full), str(full), single_code],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for i, run in enumerate((lora, full, full)):
        pipe = load_pipeline(run)
        want = np.asarray(sample(pipe, "a photo of sks ball", 0, 2, 5.0, "dpm")[0], dtype=np.int16)
        got = np.asarray(Image.open(tmp_path / f"{i}.png"), dtype=np.int16)
        assert np.abs(got - want).max() <= 1, i       # 8-bit images: at most one level of rounding


def test_a_lora_run_without_its_merged_copy_exports_and_has_a_card(sd15_run, tmp_path):
    """Adapters, dreambooth.yaml and history.json are enough: export and the model card need no merged pipeline."""
    import shutil

    from dbtutor.sharing.card import CARD, refresh_card
    run = sd15_run("lora_True", **{"model.lora.rank": 4, "model.lora.alpha": 8, "optim.lr": 1e-2,
                                   "model.train_text_encoder": True})
    slim = tmp_path / "slim"
    slim.mkdir()
    for name in (WEIGHT_NAME, "dreambooth.yaml", "history.json"):
        shutil.copy(run / name, slim / name)
    export(run, tmp_path / "a.safetensors")
    export(slim, tmp_path / "b.safetensors")
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match="adapters only"):
        export(slim, tmp_path / "c.safetensors", merged=True)
    text = refresh_card(slim).read_text()
    assert "pipe.load_lora_weights(" in text and "merged in" not in text and "dbtutor export" in text
    assert (slim / CARD).exists()
