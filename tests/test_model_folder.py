"""A damaged model folder ends in one line naming the part, the file, what is wrong and what to do: every kind of
damage (missing, empty, truncated, foreign or unreadable files, invalid JSON, missing parts, configs that do not fit
their weights, parts of two models, another kind of model) for each part of a small pipeline, through the command
line; a hub id's incomplete cached download likewise; sound folders of every layout dbtutor meets still load."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HUB_COMMIT, ROOT, TOKENIZER, fake_hub_cache, make_tiny_pipeline
from dbtutor.commands.cli import main
from dbtutor.core.errors import ConfigError
from dbtutor.models.model_check import check_model
from dbtutor.models.pipeline import load_pipeline

WEIGHTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
           "text_encoder": "text_encoder/model.safetensors"}
CONFIG_EDITS = {   # part: (sizes its weights do not have, a config its library cannot build)
    "unet": ({"block_out_channels": [32, 64]}, {"down_block_types": ["NoSuchBlock2D", "DownBlock2D"]}),
    "vae": ({"block_out_channels": [16, 32]}, {"down_block_types": ["NoSuchBlock2D", "DownEncoderBlock2D"]}),
    "text_encoder": ({"intermediate_size": 64}, {"num_attention_heads": 3}),
}


# ---- ways to damage a file ---------------------------------------------------------------------------------------

def cut(fraction):
    def damage(p):
        data = p.read_bytes()
        p.write_bytes(data[:int(len(data) * fraction)])
    return damage


def cut_to(n):
    return lambda p: p.write_bytes(p.read_bytes()[:n])


def write(data):
    return lambda p: p.write_bytes(data)


def random_bytes(p):
    import random
    p.write_bytes(random.Random(0).randbytes(p.stat().st_size))


def delete(p):
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def dangling_link(p):
    p.unlink()
    p.symlink_to(p.parent / "gone.blob")


def append(p):
    with open(p, "ab") as f:
        f.write(b"\0" * 64)


def garble_header(p):
    data = bytearray(p.read_bytes())
    data[8:16] = b"\xff" * 8
    p.write_bytes(bytes(data))


def drop_shape(p):              # the header stays valid JSON, one entry loses its shape
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header[next(k for k in header if k != "__metadata__")].pop("shape")
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)     # as long as before: spaces pad it
    assert len(text) == n
    p.write_bytes(data[:8] + text + data[8 + n:])


def edit_json(**changes):
    def damage(p):
        obj = json.loads(p.read_text())
        for k, v in changes.items():
            if v is None:
                obj.pop(k, None)
            else:
                obj[k] = v
        p.write_text(json.dumps(obj))
    return damage


def drop_comma(p):
    text = p.read_text()
    i = text.index(",", len(text) // 3)
    p.write_text(text[:i] + text[i + 1:])


def as_list(p):
    p.write_text(json.dumps([json.loads(p.read_text())]))


def lfs_pointer(p):
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "d" * 64 + "\nsize 23737880\n")


def html_page(p):
    p.write_text("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head></html>\n")


def rename_to_variant(p):
    p.rename(p.with_name(p.name.replace(".safetensors", ".fp16.safetensors")))


def cut_mid_line(p):
    lines = p.read_text(encoding="utf-8").splitlines()
    p.write_text("\n".join(lines[:1000] + [lines[1000].split(" ")[0]]), encoding="utf-8")


def weights_of(other):
    return lambda p: shutil.copy(p.parent.parent / WEIGHTS[other], p)


# ---- the table: case -> (file or folder to damage, damage, part named, file named, words of the message) -----------

CASES = {}
for part, file in WEIGHTS.items():
    folder = f"{part}/"
    wrong_sizes, unbuildable = CONFIG_EDITS[part]
    CASES.update({
        f"{part}-weights-truncated": (file, cut(0.6), part, file, ["truncated", "of", "interrupted download"]),
        f"{part}-weights-cut-in-header": (file, cut_to(40), part, file, ["truncated", "not even its whole header"]),
        f"{part}-weights-empty": (file, write(b""), part, file, ["empty"]),
        f"{part}-weights-random-bytes": (file, random_bytes, part, file, ["not a safetensors file"]),
        f"{part}-weights-missing": (file, delete, part, file, ["is missing", "no other weights file"]),
        f"{part}-weights-dangling-link": (file, dangling_link, part, file, ["missing", "link"]),
        f"{part}-weights-lfs-pointer": (file, lfs_pointer, part, file, ["Git LFS pointer", "git lfs pull"]),
        f"{part}-weights-html-page": (file, html_page, part, file, ["web page"]),
        f"{part}-weights-too-long": (file, append, part, file, ["longer than its header says"]),
        f"{part}-weights-header-garbled": (file, garble_header, part, file, ["damaged header", "not valid JSON"]),
        f"{part}-weights-header-inconsistent": (file, drop_shape, part, file, ["damaged header", "inconsistent"]),
        f"{part}-weights-only-variant": (file, rename_to_variant, part, folder, ["fp16", "variant"]),
        f"{part}-config-missing": (f"{part}/config.json", delete, part, f"{part}/config.json", ["is missing"]),
        f"{part}-config-invalid-json": (f"{part}/config.json", drop_comma, part, f"{part}/config.json",
                                        ["not valid JSON", "line"]),
        f"{part}-config-truncated": (f"{part}/config.json", cut(0.5), part, f"{part}/config.json", ["not valid JSON"]),
        f"{part}-config-a-list": (f"{part}/config.json", as_list, part, f"{part}/config.json", ["JSON list"]),
        f"{part}-config-wrong-sizes": (f"{part}/config.json", edit_json(**wrong_sizes), part, f"{part}/config.json",
                                       ["does not fit", file, "in the file but"]),
        f"{part}-config-unbuildable": (f"{part}/config.json", edit_json(**unbuildable), part, f"{part}/config.json",
                                       ["is not a valid", "config"]),
        f"{part}-folder-missing": (folder, delete, part, folder, ["is missing"]),
        f"{part}-folder-is-a-file": (folder, lambda p: (delete(p), p.write_text("x")), part, folder, ["is missing"]),
    })
CASES.update({
    **{f"{part}-weights-of-the-{other}": (WEIGHTS[part], weights_of(other), part, f"replace {part}/",
                                           ["would load with random weights"])
       for part, other in (("unet", "vae"), ("vae", "unet"), ("text_encoder", "unet"))},
    "tokenizer-folder-missing": ("tokenizer", delete, "tokenizer", "tokenizer/", ["is missing"]),
    "tokenizer-vocab-files-missing": ("tokenizer", lambda p: [delete(p / n) for n in
                                                              ("vocab.json", "merges.txt", "tokenizer.json")],
                                      "tokenizer", "tokenizer/vocab.json", ["is missing"]),
    "tokenizer-vocab-invalid-json": ("tokenizer/vocab.json", cut(0.5), "tokenizer", "tokenizer/vocab.json",
                                     ["not valid JSON"]),
    "tokenizer-json-truncated": ("tokenizer/tokenizer.json", cut(0.7), "tokenizer", "tokenizer/tokenizer.json",
                                 ["not valid JSON"]),
    "tokenizer-json-no-vocab": ("tokenizer/tokenizer.json", edit_json(model={"type": "BPE"}), "tokenizer",
                                "tokenizer/tokenizer.json", ["no BPE vocabulary"]),
    "tokenizer-merges-empty": ("tokenizer/merges.txt", write(b""), "tokenizer", "tokenizer/merges.txt", ["empty"]),
    "tokenizer-merges-cut-at-a-line": ("tokenizer/merges.txt", lambda p: p.write_text(
        "".join(p.read_text(encoding="utf-8").splitlines(keepends=True)[:30000]), encoding="utf-8"), "tokenizer",
        "tokenizer/merges.txt", ["truncated", "29,999 merges", "48,894"]),
    "tokenizer-json-merges-cut": ("tokenizer/tokenizer.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "model": {**json.loads(p.read_text())["model"], "merges": [["a", "b"]]}})),
        "tokenizer", "tokenizer/tokenizer.json", ["truncated", "1 merges"]),
    "tokenizer-merges-cut-mid-line": ("tokenizer/merges.txt", cut_mid_line, "tokenizer", "tokenizer/merges.txt",
                                      ["line 1001", "not a merge"]),
    "tokenizer-merges-not-text": ("tokenizer/merges.txt", write(b"#version: 0.2\n\xff\xfe a\n"), "tokenizer",
                                  "tokenizer/merges.txt", ["not UTF-8"]),
    "tokenizer-config-missing": ("tokenizer/tokenizer_config.json", delete, "tokenizer",
                                 "tokenizer/tokenizer_config.json", ["is missing"]),
    "tokenizer-config-invalid-json": ("tokenizer/tokenizer_config.json", drop_comma, "tokenizer",
                                      "tokenizer/tokenizer_config.json", ["not valid JSON"]),
    "tokenizer-config-no-length": ("tokenizer/tokenizer_config.json", edit_json(model_max_length=None), "tokenizer",
                                   "tokenizer/tokenizer_config.json", ["model_max_length"]),
    "tokenizer-longer-than-the-text-encoder": ("tokenizer/tokenizer_config.json", edit_json(model_max_length=77),
                                               "tokenizer", "tokenizer/tokenizer_config.json",
                                               ["prompts of 77 tokens", "at most 32"]),
    "tokenizer-ids-beyond-the-text-encoder": ("tokenizer/added_tokens.json", write(b'{"<my-token>": 60000}'),
                                              "tokenizer", "tokenizer/", ["token ids up to 60000", "49408"]),
    "scheduler-folder-missing": ("scheduler", delete, "scheduler", "scheduler/", ["is missing"]),
    "scheduler-config-missing": ("scheduler/scheduler_config.json", delete, "scheduler",
                                 "scheduler/scheduler_config.json", ["is missing"]),
    "scheduler-config-invalid-json": ("scheduler/scheduler_config.json", drop_comma, "scheduler",
                                      "scheduler/scheduler_config.json", ["not valid JSON"]),
    "scheduler-config-bad-value": ("scheduler/scheduler_config.json", edit_json(beta_schedule="scaled_linaer"),
                                   "scheduler", "scheduler/scheduler_config.json", ["is not a valid PNDMScheduler config", "scaled_linaer"]),
    "index-invalid-json": ("model_index.json", drop_comma, "pipeline", "model_index.json", ["not valid JSON"]),
    "index-truncated": ("model_index.json", cut(0.5), "pipeline", "model_index.json", ["not valid JSON"]),
    "index-empty": ("model_index.json", write(b""), "pipeline", "model_index.json", ["empty"]),
    "index-a-list": ("model_index.json", as_list, "pipeline", "model_index.json", ["JSON list"]),
    "index-not-text": ("model_index.json", write(b"\x00\xff" * 40), "pipeline", "model_index.json", ["not UTF-8"]),
    "index-entry-malformed": ("model_index.json", edit_json(unet=["diffusers"]), "pipeline", "model_index.json",
                              ["'unet'", "not [library, class]"]),
    "index-sdxl": ("model_index.json", edit_json(_class_name="StableDiffusionXLPipeline",
                                                 text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                                                 tokenizer_2=["transformers", "CLIPTokenizer"]),
                   "pipeline", "model_index.json", ["StableDiffusionXLPipeline", "text_encoder_2", "not a Stable"]),
    "index-transformer-model": ("model_index.json", edit_json(_class_name="PixArtAlphaPipeline", unet=None,
                                                              transformer=["diffusers", "PixArtTransformer2DModel"]),
                                "pipeline", "model_index.json", ["has transformer"]),
    "index-other-unet-class": ("model_index.json", edit_json(unet=["diffusers", "UNetSpatioTemporalConditionModel"]),
                               "unet", "model_index.json", ["UNetSpatioTemporalConditionModel", "UNet2DConditionModel"]),
    "index-unknown-scheduler": ("model_index.json", edit_json(scheduler=["diffusers", "NoSuchScheduler"]),
                                "scheduler", "model_index.json", ["NoSuchScheduler", "does not have"]),
})
ADVICE = ("download or copy the model again", "restore", "git lfs pull", "set model.variant=", "instead, such as",
          "pip install", "with a complete copy of that part")


@pytest.fixture(scope="module")
def sound(tmp_path_factory, tiny_pipeline_dir):
    """The tiny pipeline plus a sharded UNet and a .bin UNet variant of it, each a folder to copy and damage."""
    root = tmp_path_factory.mktemp("sound")
    from diffusers import UNet2DConditionModel
    for name, kw in (("sharded", {"max_shard_size": "40KB", "safe_serialization": True}),
                     ("bin", {"safe_serialization": False})):
        shutil.copytree(tiny_pipeline_dir, root / name)
        shutil.rmtree(root / name / "unet")
        UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet").save_pretrained(root / name / "unet", **kw)
    return {"tiny": tiny_pipeline_dir, **{n: root / n for n in ("sharded", "bin")}}


def cli(argv, capsys):
    """`dbtutor argv` in this process: (exit status, stderr lines). An exception that escapes main() fails the
    test: on the command line it would be a traceback."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def sample_argv(model, tmp_path):
    return ["sample", "--model", str(model), "--num", "1", "--out", str(tmp_path / "grid.png"),
            "model.sampling.num_inference_steps=1", "trainer.device=cpu"]


def assert_one_line(rc, lines, *words):
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("dbtutor: error: ") and "Traceback" not in lines[0], lines
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("case", list(CASES))
def test_each_damage_of_each_part_is_one_line(case, sound, tmp_path, capsys):
    target, damage, part, file, words = CASES[case]
    model = tmp_path / "model"
    shutil.copytree(sound["tiny"], model)
    if target == "tokenizer/tokenizer.json" and not (model / target).exists():     # transformers 4 saves none
        shutil.copy(TOKENIZER / "tokenizer.json", model / target)
    damage(model / target)
    rc, lines = cli(sample_argv(model, tmp_path), capsys)
    assert_one_line(rc, lines, f"{model}: ", part, file, *words)
    assert any(a in lines[0] for a in ADVICE), lines[0]
    assert not (tmp_path / "grid.png").exists()


SHARD_CASES = {   # the UNet in other file layouts: (variant, damage to the file, file named, words)
    "shard-missing": ("sharded", lambda u: delete(sorted(u.glob("*-00002-of-*.safetensors"))[0]), "-00002-of-",
                      ["is missing"]),
    "shard-truncated": ("sharded", lambda u: cut(0.5)(sorted(u.glob("*-00001-of-*.safetensors"))[0]), "-00001-of-",
                        ["truncated"]),
    "shard-index-invalid": ("sharded", lambda u: cut(0.5)(u / "diffusion_pytorch_model.safetensors.index.json"),
                            "unet/diffusion_pytorch_model.safetensors.index.json", ["not valid JSON"]),
    "shard-index-lists-a-missing-tensor": (
        "sharded", lambda u: edit_json(weight_map={**json.loads(
            (u / "diffusion_pytorch_model.safetensors.index.json").read_text())["weight_map"],
            "no.such.tensor": "diffusion_pytorch_model-00001-of-%05d.safetensors" % len(
                list(u.glob("*-of-*.safetensors")))})(u / "diffusion_pytorch_model.safetensors.index.json"),
        "unet/diffusion_pytorch_model.safetensors.index.json", ["no.such.tensor", "does not hold it"]),
    "bin-truncated": ("bin", lambda u: cut(0.5)(u / "diffusion_pytorch_model.bin"), "unet/diffusion_pytorch_model.bin",
                      ["truncated", "zip directory"]),
    "bin-random-bytes": ("bin", lambda u: random_bytes(u / "diffusion_pytorch_model.bin"),
                         "unet/diffusion_pytorch_model.bin", ["not a PyTorch weights file"]),
}


@pytest.mark.parametrize("case", list(SHARD_CASES))
def test_sharded_and_bin_weights_damaged(case, sound, tmp_path, capsys):
    variant, damage, file, words = SHARD_CASES[case]
    model = tmp_path / "model"
    shutil.copytree(sound[variant], model)
    assert len(list((model / "unet").glob("*.safetensors"))) > 1 or variant == "bin"
    damage(model / "unet")
    rc, lines = cli(sample_argv(model, tmp_path), capsys)
    assert_one_line(rc, lines, "unet", file, *words)


def save_unet(folder, **changes):
    """Replace the pipeline's UNet with a sound one of another shape (its weights fit its own config)."""
    from diffusers import UNet2DConditionModel
    config = dict(make_tiny_pipeline().unet.config)
    config.update(changes)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet", safe_serialization=True)


@pytest.mark.parametrize("changes,words", [
    ({"in_channels": 9}, ["9 input and 4 output channels", "latents have 4", "inpainting", "instead, such as"]),
    ({"cross_attention_dim": 32}, ["width 32", "text encoder's is 16", "two models"]),
])
def test_parts_of_two_models_or_another_kind(changes, words, tiny_pipeline_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    save_unet(model, **changes)
    rc, lines = cli(sample_argv(model, tmp_path), capsys)
    assert_one_line(rc, lines, "unet", "unet/config.json", *words)


def test_not_a_pipeline_folder(tiny_pipeline_dir, tmp_path, capsys):
    rc, lines = cli(sample_argv(tiny_pipeline_dir / "unet", tmp_path), capsys)      # one part, not the pipeline
    assert_one_line(rc, lines, "without model_index.json", "it holds one UNet2DConditionModel")
    (tmp_path / "model.safetensors").write_bytes(b"")
    rc, lines = cli(sample_argv(tmp_path / "model.safetensors", tmp_path), capsys)
    assert_one_line(rc, lines, "is a file, not a folder")
    rc, lines = cli(sample_argv(tmp_path / "nowhere", tmp_path), capsys)
    assert_one_line(rc, lines, f"--model {tmp_path / 'nowhere'}: no such folder")


def test_eval_and_ablate_stop_in_one_line_before_any_work(tiny_pipeline_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    cut(0.5)(model / WEIGHTS["vae"])
    words = (f"{model}: vae: {WEIGHTS['vae']} is truncated",)
    for argv in (["eval", "--model", str(model), "--out", str(tmp_path / "e" / "eval.json")],
                 ["eval", f"output_dir={model}", "--out", str(tmp_path / "e" / "eval.json")],
                 ["ablate", "--quick", "--work", str(tmp_path / "e"), f"model.pretrained={model}"]):
        rc, lines = cli(argv, capsys)
        assert_one_line(rc, lines, *words)
    assert not (tmp_path / "e").exists()


def test_a_part_that_cannot_be_read(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    """Permissions cannot be taken from root (the tests' user here), so the refusal is simulated where it
    happens: listing the UNet's folder."""
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    real = Path.iterdir

    def iterdir(self):
        if self == model / "unet":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    rc, lines = cli(sample_argv(model, tmp_path), capsys)
    assert_one_line(rc, lines, f"{model}: {model / 'unet'} cannot be read (PermissionError: Permission denied)",
                    "check its permissions")


def test_a_damaged_saved_run_says_to_train_again(tiny_pipeline_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_pipeline_dir, run)
    for name in ("history.json", "dreambooth.yaml"):
        (run / name).write_text("[]")
    cut(0.5)(run / WEIGHTS["unet"])
    rc, lines = cli(sample_argv(run, tmp_path), capsys)
    assert_one_line(rc, lines, "truncated", "saved by `dbtutor train`", "trainer.resume=false")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["toyworld", "sd15-small-fp32", "sd15-small-fp16", "tiny-sharded", "tiny-bin"])
def test_sound_folders_pass_and_load(layout, sound, tmp_path):
    """No false alarms: the shipped model, SD v1.5's layout in both dtypes, sharded and .bin weights all load."""
    if layout == "toyworld":
        folder = ROOT / "data" / "models" / "toyworld"
    elif layout.startswith("sd15"):
        from dbtutor.models.sd15 import save_random_pipeline
        folder = tmp_path / layout
        save_random_pipeline(folder, dtype=layout.rsplit("-", 1)[1], size="small")
    else:
        folder = sound[layout.split("-")[1]]
    assert check_model(folder) == folder
    pipe = load_pipeline(str(folder))
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels


def test_the_check_reads_a_folder_again_only_when_a_file_changed(tiny_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    check_model(model)
    cut(0.5)(model / WEIGHTS["vae"])                    # a changed size: checked again, and refused
    with pytest.raises(ConfigError, match="vae: vae/diffusion_pytorch_model.safetensors is truncated"):
        check_model(model)


# ---- a hub id: its cached download, laid out as huggingface_hub lays it out -----------------------------------

REPO, COMMIT = "dbtutor-test/tiny-sd", HUB_COMMIT


def run_cli(args, hf_home):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "DBTUTOR_DEBUG")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dbtutor", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    return r.returncode, [line for line in r.stderr.splitlines() if line.strip()], r.stderr


@pytest.mark.slow
@pytest.mark.versions
@pytest.mark.skipif(os.name == "nt", reason="the fake cache uses symbolic links")
def test_a_hub_ids_cached_download(tiny_pipeline_dir, tmp_path):
    hf = tmp_path / "hf"
    entry = fake_hub_cache(hf, tiny_pipeline_dir, REPO)
    args = ["sample", "--model", REPO, "--num", "1", "--out", str(tmp_path / "grid.png"),
            "model.sampling.num_inference_steps=1", "trainer.device=cpu"]
    rc, lines, err = run_cli(args, hf)                  # complete: found offline and sampled
    assert rc == 0 and (tmp_path / "grid.png").exists(), err
    # cut off: the UNet's blob half written (.incomplete), its link never made
    link = entry / "snapshots" / COMMIT / WEIGHTS["unet"]
    blob = link.resolve()
    link.unlink()
    partial = blob.with_name(blob.name + ".incomplete")
    blob.rename(partial)
    data = partial.read_bytes()
    cut(0.5)(partial)
    rc, lines, err = run_cli(args, hf)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dbtutor: error: {REPO}: its cached download is incomplete: unet: {WEIGHTS['unet']}")
    assert "run again while online" in lines[0] and f"delete {entry}" in lines[0]
    # a blob damaged on disk: huggingface_hub would trust it, so the advice is to delete the entry
    partial.unlink()
    blob.write_bytes(data)
    link.symlink_to(os.path.relpath(blob, link.parent))
    vae = (entry / "snapshots" / COMMIT / WEIGHTS["vae"]).resolve()
    cut(0.5)(vae)
    rc, lines, err = run_cli(args, hf)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{REPO}: its cached download is damaged: vae: {WEIGHTS['vae']} is truncated" in lines[0]
    assert f"delete {entry} and run again while online" in lines[0]
    # cut off before any file was complete: refs/main and a half-written blob, no snapshot
    shutil.rmtree(entry / "snapshots")
    rc, lines, err = run_cli(args, hf)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--model {REPO}: its download from the Hugging Face Hub is incomplete" in lines[0]
    assert f"delete {entry}" in lines[0]
