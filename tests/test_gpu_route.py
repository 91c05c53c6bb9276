"""The course on a GPU (a T4 as Colab gives it, stood in for on the CPU): LoRA on every card, with and without
bitsandbytes, full fine-tuning only when asked; a LoRA run of the sd15 profile is saved as its adapters (MBs);
the fp16 weights are asked for; the measuring model is fetched before the first run, so validations score from
step 0, and CLIP is never loaded where only DINOv2 measures."""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import DOG6, ROOT, card_code, fake_hub_cache, save_tiny_encoders
from dbtutor import course
from dbtutor.models.lora import WEIGHT_NAME

T4 = (14.7, (7, 5))         # what torch.cuda reports on a Colab T4: GiB, compute capability


@pytest.fixture
def t4(tmp_path, monkeypatch):
    """course.settings on a CUDA T4 (pick_device and the card stood in for); bitsandbytes as each test says."""
    import dbtutor.models.memory
    import dbtutor.models.pipeline
    for name in ("DBTUTOR_PROFILE", "DBTUTOR_PRETRAINED", "DBTUTOR_NB_LORA_RANK", "DBTUTOR_NB_LR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBTUTOR_NB_WORK", str(tmp_path / "work"))
    monkeypatch.setattr(dbtutor.models.pipeline, "pick_device", lambda device="auto": torch.device("cuda"))
    monkeypatch.setattr(dbtutor.models.memory, "_gpu", lambda: T4)

    def card(bnb: bool):
        monkeypatch.setattr(dbtutor.models.memory, "_has_bitsandbytes", lambda: bnb)
    return card


@pytest.mark.parametrize("bnb", [False, True])
def test_the_course_trains_lora_on_a_t4_with_or_without_bitsandbytes(t4, bnb):
    t4(bnb)
    c = course.settings("sd15")
    assert (c.lora_rank, c.lr, c.use_8bit_adam, c.precision, c.variant, c.save_merged) == (16, 1e-4, False, "16",
                                                                                           "fp16", False)
    assert c.sources["lora_rank"] == "this GPU" and "LoRA r=16" in c.gpu_why and "lora_rank=0" in c.gpu_why
    o = c.overrides
    assert (o["model.lora.rank"], o["model.variant"], o["trainer.precision"], o["trainer.device"]) == (16, "fp16",
                                                                                                     "16", "cuda")
    toy = course.settings("toy")                              # the toy world ignores the card
    assert (toy.lora_rank, toy.precision, toy.variant, toy.overrides["model.variant"]) == (0, "32", "", None)


@pytest.mark.parametrize("bnb", [False, True])
def test_full_fine_tuning_when_asked_takes_the_setting_that_fits(t4, bnb, monkeypatch):
    t4(bnb)
    c = course.settings("sd15", lora_rank=0)                  # asked in a notebook's cell
    assert (c.lora_rank, c.lr, c.gradient_checkpointing, c.use_8bit_adam) == (0, 5e-6, True, bnb)
    assert c.checkpoint_every == 0 and ("may run out of memory" in c.gpu_why) != bnb
    monkeypatch.setenv("DBTUTOR_NB_LORA_RANK", "0")           # or in the environment
    te = course.settings("sd15", train_text_encoder=True)
    assert (te.lora_rank, te.lr, te.use_8bit_adam, te.train_text_encoder) == (0, 2e-6, bnb, True)
    assert course.settings("sd15", lr=3e-6).lr == 3e-6        # what the learner set stays
    monkeypatch.delenv("DBTUTOR_NB_LORA_RANK")
    lora_te = course.settings("sd15", train_text_encoder=True)   # LoRA with the text encoder's adapters
    assert (lora_te.lora_rank, lora_te.lr, lora_te.use_8bit_adam) == (16, 1e-4, False)
    # 05's parameters cell (LORA_RANK = 0): kept for 06 and 07, which leave it at None
    assert course.setup("sd15", lora_rank=0).lora_rank == 0
    later = course.setup(None, lora_rank=None)
    assert (later.profile, later.lora_rank, later.lr) == ("sd15", 0, 5e-6)


def weight_keys(folder) -> dict:
    """{file: its tensor names} for every safetensors file under a run folder."""
    out = {}
    for f in folder.rglob("*.safetensors"):
        with safe_open(str(f), framework="pt") as g:
            out[f.relative_to(folder).as_posix()] = set(g.keys())
    return out


@pytest.mark.slow
def test_a_lora_run_of_the_sd15_profile_is_saved_as_its_adapters(t4, tmp_path, monkeypatch):
    """The course's config on a T4 with bitsandbytes (LoRA, adapters only), trained on the CPU on the small
    SD-structured pipeline: the run folder holds no UNet, text-encoder or VAE weights, only the adapters (and the
    cached latents); its checkpoint holds 12 bytes per trained parameter (weights and AdamW's two moments), which
    is what makes SD v1.5's LoRA r=16 checkpoint 38 MB (docs/gpu.md)."""
    from dbtutor.models.lora import count_parameters
    from dbtutor.models.pipeline import load_pipeline, load_trained
    from dbtutor.models.sd15 import save_random_pipeline
    save_random_pipeline(tmp_path / "small", dtype="fp32", size="small")
    monkeypatch.setenv("DBTUTOR_PRETRAINED", str(tmp_path / "small"))
    t4(True)
    c = course.settings("sd15", train_text_encoder=True)
    fast = {"trainer.device": "cpu", "trainer.precision": "32", "model.data.resolution": 64, "trainer.max_steps": 2,
            "trainer.checkpoint_every": 2, "trainer.keep_checkpoints": True, "model.data.num_reg_images": 2,
            "model.sampling.num_inference_steps": 2, "model.sampling.card_seeds": 0, "trainer.validation.every": 0,
            "trainer.progress": False}
    res = course.train_run({**c.overrides, **fast}, tmp_path / "work")
    out = res.output_dir
    assert c.overrides["model.lora.rank"] == 16 and c.overrides["model.variant"] == "fp16"
    assert not any((out / p).exists() for p in ("model_index.json", "unet", "text_encoder", "vae"))
    pipe = load_pipeline(tmp_path / "small")
    base = {f"{n}.{k}" for n in ("unet", "text_encoder", "vae") for k in getattr(pipe, n).state_dict()}
    files = weight_keys(out)
    assert WEIGHT_NAME in files
    for name, keys in files.items():
        if name.startswith("latents/"):
            continue
        assert all("lora" in k for k in keys), name                # adapters only, in every file
        assert not keys & base and not {k.removeprefix("text_model.") for k in keys} & base, name
    ckpt = out / "checkpoints" / "step_000002"
    n = count_parameters(_lora_cfg(out), *_lora_modules(tmp_path / "small", out))     # UNet and text encoder
    held = sum(f.stat().st_size for f in ckpt.iterdir() if f.suffix in (".safetensors", ".pt"))
    assert 12 * n < held < 12 * n * 1.1 + 200_000, (held, n)
    assert abs((out / WEIGHT_NAME).stat().st_size - 4 * n) < 4 * n * 0.05 + 100_000
    assert load_trained(out).unet.config.block_out_channels == pipe.unet.config.block_out_channels


def _lora_cfg(out):
    from omegaconf import OmegaConf
    return OmegaConf.load(out / "dreambooth.yaml")


def _lora_modules(base, out):
    """The base model's UNet and text encoder with the run's adapters added (to count what it trained)."""
    from dbtutor.models.lora import add_lora
    from dbtutor.models.pipeline import load_pipeline
    pipe = load_pipeline(base)
    add_lora(_lora_cfg(out), pipe.unet, pipe.text_encoder)
    return pipe.unet, pipe.text_encoder


def test_the_measuring_stick_never_touches_clip(tiny_encoders, monkeypatch):
    import transformers
    from dbtutor.measuring.measure import ClipMeasure
    touched = []
    for cls in ("CLIPModel", "CLIPTokenizer"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained",
                            classmethod(lambda cls, *a, **k: touched.append(cls) or 1 / 0))
    monkeypatch.setenv("DBTUTOR_CLIP_MODEL", "nobody/no-clip-here")
    monkeypatch.setenv("DBTUTOR_DINO_MODEL", str(tiny_encoders / "dino"))
    m = ClipMeasure(DOG6)
    photos = [Image.open(p).convert("RGB") for p in sorted(DOG6.glob("*.jpg"))[:2]]
    s = m.scores(photos, [Image.new("RGB", (64, 64), (0, 0, 255))] * 2)
    assert -1 <= s["class_drift"] < s["subject_fidelity"] <= 1 and touched == []


def test_eval_loads_both_at_once_and_a_model_loads_when_first_used(tiny_encoders, tmp_path):
    from dbtutor.measuring.encoders import Encoders
    from dbtutor.core.errors import ConfigError
    enc = Encoders(tmp_path / "no-clip", tiny_encoders / "dino", load=("dino",))
    assert enc.dino_images([Image.new("RGB", (40, 40))]).shape[0] == 1
    with pytest.raises(ConfigError, match=r"cannot load the CLIP model .*no-clip .*--clip-model") as e:
        enc.clip_images([Image.new("RGB", (40, 40))])
    assert "\n" not in str(e.value) and not enc.available("clip")
    with pytest.raises(ConfigError, match="cannot load the CLIP model"):      # dbtutor eval: before any work
        Encoders(tmp_path / "no-clip", tiny_encoders / "dino")


@pytest.mark.slow
@pytest.mark.versions
@pytest.mark.skipif(os.name == "nt", reason="the fake cache uses symbolic links")
def test_an_sd15_course_run_scores_its_validations_from_step_0(tmp_path):
    """A learner's first sd15 run on real photos, in a fresh process whose Hugging Face cache holds the base model
    as a download with variant="fp16" leaves it, and neither DINOv2 nor CLIP. The Hub is stood in for (offline): a
    download of facebook/dinov2-small puts a tiny one into the cache. The course fetches DINOv2 before training, so
    the validation at step 0 (which never downloads) already has DINO scores; no CLIP-I, as CLIP is not there and
    nothing fetches it; the base model is read in its fp16 files, as float32 on the CPU."""
    from dbtutor.models.sd15 import save_random_pipeline
    small = tmp_path / "small"
    save_random_pipeline(small, dtype="fp32", size="small")
    fp16 = tmp_path / "small-fp16"                       # the same weights as a variant download holds them
    from dbtutor.models.pipeline import load_pipeline, sd_layout
    load_pipeline(small).to(torch.float16).save_pretrained(fp16, variant="fp16")
    sd_layout(fp16)
    save_tiny_encoders(tmp_path / "enc")
    hf = tmp_path / "hf"
    fake_hub_cache(hf, fp16, "dbtutor-test/small-sd15")
    code = f"""
import json, pathlib, transformers
from conftest import fake_hub_cache
real, fetched = transformers.Dinov2Model.from_pretrained.__func__, []

def from_pretrained(cls, name, *args, **kwargs):          # the Hub: a download puts the model into the cache
    if name == "facebook/dinov2-small" and not kwargs.get("local_files_only") and not fetched:
        fetched.append(fake_hub_cache(pathlib.Path({str(hf)!r}), pathlib.Path({str(tmp_path / "enc" / "dino")!r}),
                                      name))
    return real(cls, name, *args, **kwargs)
transformers.Dinov2Model.from_pretrained = classmethod(from_pretrained)
from dbtutor import course
c = course.settings("sd15")
run = c.train(progress=False)
v = json.loads((run.output_dir / "validation" / "validation.json").read_text())
print(json.dumps({{"variant": c.overrides["model.variant"], "dtype": str(run.pipe.unet.dtype), "fetched": len(fetched),
                  "prompts": v["settings"]["prompts"], "scores": {{r["step"]: r["scores"] for r in v["validations"]}}}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBTUTOR_", "HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
               DBTUTOR_PRETRAINED="dbtutor-test/small-sd15", DBTUTOR_NB_VARIANT="fp16",
               DBTUTOR_NB_WORK=str(tmp_path / "work"), DBTUTOR_NB_RESOLUTION="64", DBTUTOR_NB_MAX_STEPS="2",
               DBTUTOR_NB_NUM_REG_IMAGES="2", DBTUTOR_NB_SAMPLER_STEPS="2", DBTUTOR_NB_VALIDATION_EVERY="2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["variant"] == "fp16" and got["dtype"] == "torch.float32" and got["fetched"] == 1
    assert got["prompts"] == ["a photo of sks dog", "a photo of a dog"]
    assert sorted(got["scores"]) == ["0", "2"]
    for step, scores in got["scores"].items():
        assert set(scores) == set(got["prompts"]) and all(set(s) == {"dino"} for s in scores.values()), step
    # the run's card loads it the same way: the adapters onto the base model's fp16 files, the only ones in the cache
    run = tmp_path / "work" / "runs"
    card = next(run.rglob("README.md"))
    code = card_code(card.parent)
    assert "variant='fp16'" in code
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=card.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (card.parent / "sample.png").exists()
