"""Interrupted runs lose nothing: a real `dbtutor train` is killed (SIGKILL) while it writes class images, latents,
a checkpoint and the output pipeline, and interrupted (SIGINT) between steps; each rerun keeps what was finished,
and the last one ends with exactly the weights of an uninterrupted run.

The kills land at exact places through the test hook dbtutor.core.hooks.fault_point (DBTUTOR_FAULT=<point>:<n>)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dbtutor
from dbtutor.runs import checkpoint
from dbtutor.core.hooks import FAULT_ENV
from dbtutor.core.locks import LOCK_FILES
from dbtutor.models.pipeline import sd_layout
from conftest import ROOT, SUBJECT, make_tiny_pipeline

PARTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
         "vae": "vae/diffusion_pytorch_model.safetensors"}


def dbtutor_train(config: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    env.pop("DBTUTOR_DEBUG", None)
    if fault:
        env[FAULT_ENV] = fault
    # a shell's background job (`.ci/run &`) starts with SIGINT ignored, and a child inherits that: give it the default
    return subprocess.run([sys.executable, "-m", "dbtutor", "train", "--config", str(config)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def visible(folder: Path, pattern="*") -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))


def hidden(folder: Path) -> list[str]:
    """Hidden entries, except the folder lock (an empty file that stays; the OS releases the lock itself) and its
    holder's record (left behind by a killed run, rewritten by the next)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name not in LOCK_FILES) \
        if folder.is_dir() else []


def mtimes(paths) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in paths}


def check_files_whole(root: Path):
    """Every png opens and every safetensors loads, anywhere under root."""
    n = 0
    for p in root.rglob("*"):
        if p.suffix == ".png":
            Image.open(p).load()
            n += 1
        elif p.suffix == ".safetensors":
            load_file(str(p))
            n += 1
    return n


@pytest.mark.slow
def test_killed_at_every_stage_then_resumed_equals_an_uninterrupted_run(tmp_path, tiny_pipeline_dir):
    out, reg = tmp_path / "out", tmp_path / "reg"
    config = tmp_path / "run.yaml"
    config.write_text(f"""output_dir: {out}
model:
  pretrained: {tiny_pipeline_dir}
  train_text_encoder: true          # a checkpoint of two parts, to be cut off between them
  sampling: {{num_inference_steps: 2}}
  data:
    instance_dir: {SUBJECT}
    regularization_dir: {reg}
    num_reg_images: 6
    num_images_per_prompt: 2
    resolution: 32
trainer: {{max_steps: 6, checkpoint_every: 2, progress: false}}
""")
    inst_cache, reg_cache = out / "latents" / "instance", out / "latents" / "regularization"

    # 1. killed while the 3rd class image is written (temp file complete, not yet renamed); the 1st atomic write
    #    is the folder's record of which model makes its images
    r = dbtutor_train(config, "atomic:4")
    assert r.returncode == -9, r.stderr
    assert [p.name for p in visible(reg, "*.png")] == ["class_00000.png", "class_00001.png"]
    assert len(hidden(reg)) == 1 and hidden(reg)[0].startswith(".class_00002.png.")   # the temp: hidden, ignored
    assert check_files_whole(reg) == 3                                 # even the temp is whole (fsync, then rename)
    reg_times = mtimes(visible(reg, "*.png"))

    # 2. killed after the 2nd latent of the instance images is cached
    r = dbtutor_train(config, "cache:2")
    assert r.returncode == -9, r.stderr
    assert len(visible(reg, "*.png")) == 6 and hidden(reg) == []             # the rest generated, the dead temp removed
    assert mtimes(visible(reg, "*.png")[:2]) == reg_times                      # the two finished ones were not redone
    assert len(visible(inst_cache, "*.safetensors")) == 2 and not (inst_cache / "manifest.json").exists()
    assert check_files_whole(tmp_path) == 8
    cache_times = mtimes(visible(inst_cache, "*.safetensors"))

    # 3. killed in the middle of writing the checkpoint of step 4 (unet written, text encoder not yet)
    r = dbtutor_train(config, "ckpt:3")
    assert r.returncode == -9, r.stderr
    ckpts = out / "checkpoints"
    assert [p.name for p in checkpoint.complete(out)] == ["step_000002"]
    assert hidden(ckpts) == [".tmp-step_000004"] and not (ckpts / ".tmp-step_000004" / "state.json").exists()
    assert all(mtimes(visible(inst_cache, "*.safetensors"))[k] == v for k, v in cache_times.items())
    assert len(visible(inst_cache, "*.safetensors")) == 5 and len(visible(reg_cache, "*.safetensors")) == 6
    all_cache_times = mtimes(visible(inst_cache, "*.safetensors") + visible(reg_cache, "*.safetensors"))

    # 4. Ctrl-C (a real SIGINT) at the end of the 3rd step of this run: a checkpoint of step 5, exit 130, one line
    r = dbtutor_train(config, "step:3:INT")
    assert r.returncode == 130, r.stderr
    assert "resuming from" in r.stdout and "(step 2)" in r.stdout
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("dbtutor: interrupted"), r.stderr
    assert [p.name for p in checkpoint.complete(out)] == ["step_000004", "step_000005"]
    assert hidden(ckpts) == []                                          # the half-written step 4 was cleaned
    assert mtimes(visible(inst_cache, "*.safetensors") + visible(reg_cache, "*.safetensors")) == all_cache_times
    assert all(mtimes(visible(reg, "*.png"))[k] == v for k, v in reg_times.items())

    # 5. killed while the final pipeline is swapped into output_dir (after two of its parts)
    r = dbtutor_train(config, "pipeline:3")
    assert r.returncode == -9, r.stderr
    assert "(step 5)" in r.stdout
    assert not (out / "model_index.json").exists()                     # not loadable half-new: no index yet
    assert (out / ".pipeline.new" / ".ready").exists()

    # 6. the rerun completes the swap and finds the finished run (no checkpoint of step 6 is written: the
    #    checkpoints are removed after the final save, trainer.keep_checkpoints=false)
    r = dbtutor_train(config)
    assert r.returncode == 0, r.stderr
    assert "already holds this run's pipeline (6 steps): nothing to train" in r.stdout
    assert not ckpts.exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert hidden(out) == [] and hidden(reg) == [] and hidden(inst_cache) == [] and hidden(ckpts) == []
    # class images, latents, the pipeline's weights, the model card's samples.png, and the validations of steps 0
    # and 6 with their strip
    assert check_files_whole(tmp_path) == 6 + 5 + 6 + 3 + 1 + 3
    validations = json.loads((out / "validation" / "validation.json").read_text())["validations"]
    assert [v["step"] for v in validations] == [0, 6]                   # each made once, across the kills
    assert mtimes(visible(inst_cache, "*.safetensors") + visible(reg_cache, "*.safetensors")) == all_cache_times

    # the same run without interruptions, in this process, single-threaded like the subprocesses
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dbtutor.load_config(config, [f"output_dir={tmp_path / 'whole'}"])
        whole = dbtutor.train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in history]
    for part, f in PARTS.items():
        a, b = load_file(str(out / f)), load_file(str(whole.output_dir / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


# ---- save_pipeline: stopped at every point of the swap --------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: no handler in dbtutor catches it and no cleanup code runs on the way out."""


def version(out: Path, weights: dict) -> str:
    """'none' (no model_index.json), or the name of the pipeline whose every part `out` holds; fails if mixed."""
    if not (out / "model_index.json").exists():
        return "none"
    found = set()
    for name, parts in weights.items():
        if all(torch.equal(load_file(str(out / f))[k], w[k]) for f, w in parts.items() for k in list(w)[:3]):
            found.add(name)
    assert len(found) == 1, f"{out} mixes pipelines: {found}"
    return found.pop()


@pytest.mark.slow
def test_save_pipeline_killed_anywhere_leaves_the_old_or_the_new_output(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config()
    pipes = {"old": make_tiny_pipeline(seed=0), "new": make_tiny_pipeline(seed=1)}
    weights = {}
    for name, pipe in pipes.items():
        pipe.save_pretrained(tmp_path / name, safe_serialization=True)
        sd_layout(tmp_path / name)                                      # as save_pipeline writes them
        weights[name] = {f: load_file(str(tmp_path / name / f)) for f in PARTS.values()}
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)                           # not part of the pipeline: never touched
    (out / "checkpoints" / "keep.txt").write_text("x")
    seen, n = set(), 1
    while True:
        checkpoint.save_pipeline(pipes["old"], cfg, out, [{"step": 1}])
        assert version(out, weights) == "old"
        calls = []

        def kill_at_n(point):
            calls.append(point)
            if point == "pipeline" and calls.count("pipeline") == n:
                raise Killed
        monkeypatch.setattr(checkpoint, "fault_point", kill_at_n)
        try:
            checkpoint.save_pipeline(pipes["new"], cfg, out, [{"step": 2}])
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(checkpoint, "fault_point", lambda point: None)
        state = version(out, weights)
        seen.add(state)
        if n == 1:
            assert state == "old"                                       # all written, nothing swapped yet
        checkpoint.recover_output(out)                                  # what the next save (a rerun) does first
        assert version(out, weights) == "new"
        assert json.loads((out / "history.json").read_text()) == [{"step": 2}]
        assert hidden(out) == [] and (out / "checkpoints" / "keep.txt").exists()
        if finished:
            break
        n += 1
    assert n > 5 and seen == {"old", "none", "new"}
    from diffusers import StableDiffusionPipeline
    StableDiffusionPipeline.from_pretrained(out)


def test_a_pipeline_killed_while_being_written_is_discarded(tmp_path, tiny_config):
    out = tmp_path / "out"
    checkpoint.save_pipeline(make_tiny_pipeline(seed=0), tiny_config(), out, [])
    before = load_file(str(out / PARTS["unet"]))
    half = out / ".pipeline.new" / "unet"                               # killed inside save_pretrained: no .ready
    half.mkdir(parents=True)
    (half / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 10)
    checkpoint.recover_output(out)
    assert hidden(out) == []
    after = load_file(str(out / PARTS["unet"]))
    assert all(torch.equal(before[k], after[k]) for k in before)
