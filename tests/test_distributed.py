"""A real 2-process data-parallel run (accelerate launch, gloo on the CPU) against one process with the same global batch."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import dbtutor
from dbtutor.core.hooks import RANK_LOG
from dbtutor.core.locks import LOCK, OWNER

from conftest import SUBJECT

pytestmark = pytest.mark.slow                    # real processes: the full suite only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, nproc: int, rank_log: Path) -> subprocess.CompletedProcess:
    # On a machine without GPUs, --multi_gpu runs torchrun and accelerate picks gloo on the CPU. (`--cpu
    # --num_processes 2` would NOT: accelerate then starts a single process, multi-CPU needs MPI.)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "dbtutor", "train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", RANK_LOG: str(rank_log), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def weights(out: Path) -> dict:
    w = {}
    for part in ("unet", "text_encoder"):
        for k, v in load_file(str(out / part / "diffusion_pytorch_model.safetensors" if part == "unet"
                                  else out / part / "model.safetensors")).items():
            w[f"{part}.{k}"] = v
    return w


def test_two_processes_equal_one_with_the_same_global_batch(tiny_config, tiny_pipeline_dir, tmp_path, monkeypatch):
    reg = tmp_path / "reg"
    reg.mkdir()
    shutil.copy(sorted(SUBJECT.glob("*.png"))[0], reg / "class_00002.png")   # already there: must be kept, not redone
    shutil.copy(sorted(SUBJECT.glob("*.png"))[1], reg / "mine.png")          # a user's own class image counts too
    common = {"model.data.num_reg_images": 7, "model.data.num_images_per_prompt": 2, "trainer.max_steps": 4,
              "trainer.checkpoint_every": 2, "optim.warmup_steps": 0, "optim.lr": 1e-3,
              "model.train_text_encoder": True}          # both parts' gradients are averaged across processes
    cfg2 = tiny_config(**common, **{"trainer.batch_size": 1, "output_dir": str(tmp_path / "two")})
    OmegaConf.save(cfg2, tmp_path / "two.yaml")
    r = launch(tmp_path / "two.yaml", 2, tmp_path / "log2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    ranks = [json.loads((tmp_path / "log2" / f"rank_{i}.json").read_text()) for i in range(2)]
    assert [x["world_size"] for x in ranks] == [2, 2]

    # class images: exactly 7, the missing indices split between the ranks, none twice, none overwritten
    names = sorted(p.name for p in reg.iterdir() if p.name != LOCK)
    assert names == ["class_00000.png", "class_00001.png", "class_00002.png", "class_00003.png", "class_00004.png",
                     "class_00005.png", "dbtutor-class-images.json", "mine.png"]     # + which model made them
    made = [set(x["reg_written"]) for x in ranks]
    assert made[0] and made[1] and not made[0] & made[1]
    assert made[0] | made[1] == {f"class_{i:05d}.png" for i in (0, 1, 3, 4, 5)}
    assert (reg / "class_00002.png").read_bytes() == sorted(SUBJECT.glob("*.png"))[0].read_bytes()
    # the latent cache is encoded by the main process only, and only it samples the validations (steps 0 and 4)
    assert ranks[0]["encoded"] > 0 and ranks[1]["encoded"] == 0
    assert ranks[0]["validated"] == [0, 4] and ranks[1]["validated"] == []
    assert [v["step"] for v in json.loads((tmp_path / "two" / "validation" / "validation.json").read_text())
            ["validations"]] == [0, 4]
    # one output, written once: a pipeline; the checkpoint of step 2 removed after it (by one process); each
    # folder was locked by the main process alone (a second holder would have stopped the run), and let go
    assert (tmp_path / "two" / "model_index.json").exists()
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith((".", "checkpoints"))) == [LOCK]
    for folder in (reg, tmp_path / "two", tmp_path / "two" / "latents" / "instance"):
        assert (folder / LOCK).exists() and not (folder / OWNER).exists()

    # one process, batch 2: the same global batch, the same class images (the folder is full now)
    monkeypatch.setenv(RANK_LOG, str(tmp_path / "log1"))
    cfg1 = tiny_config(**common, **{"trainer.batch_size": 2, "output_dir": str(tmp_path / "one")})
    res = dbtutor.train(cfg1)
    one = json.loads((tmp_path / "log1" / "rank_0.json").read_text())
    assert one["reg_written"] == []

    # the ranks drew different images, and together exactly the one process's global batch
    d0, d1 = ranks[0]["drawn"], ranks[1]["drawn"]
    assert [x[2] for x in d0] != [x[2] for x in d1]
    assert len(one["drawn"]) == len(d0) == 8                       # 4 steps x (instance, prior)
    for a, b, c in zip(d0, d1, one["drawn"]):
        assert a[:2] == b[:2] == c[:2] and a[2] + b[2] == c[2]

    # gradients were averaged: the saved UNet and text encoder match the one-process run. Measured here: the
    # distance is ~1e-4 of the distance travelled (float summation order, amplified by Adam); with DDP removed
    # (each rank steps on its own half) it is 0.8 (UNet) and 0.4 (text encoder).
    base, w1, w2 = weights(tiny_pipeline_dir), weights(tmp_path / "one"), weights(tmp_path / "two")
    for part in ("unet", "text_encoder"):
        keys = [k for k in base if k.startswith(part)]
        moved = torch.cat([(w1[k] - base[k]).flatten() for k in keys]).norm().item()
        gap = torch.cat([(w1[k] - w2[k]).flatten() for k in keys]).norm().item()
        assert moved > 0.05 and gap < 1e-2 * moved, (part, gap, moved)
    # the logged loss is the mean over the processes: the loss of the global batch
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(h2) == len(res.history) == 4
    for a, b in zip(h2, res.history):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["prior_loss"] - b["prior_loss"]) < 1e-4


def test_two_processes_on_a_locked_output_dir_both_stop_without_hanging(tiny_config, tmp_path):
    """Only the main process asks for the lock; the other follows its answer instead of waiting at a barrier."""
    from test_locks import start_holder, stop
    cfg = tiny_config(**{"output_dir": str(tmp_path / "two"), "trainer.max_steps": 2})
    OmegaConf.save(cfg, tmp_path / "two.yaml")
    holder = start_holder(tmp_path / "two", 300)
    try:
        r = launch(tmp_path / "two.yaml", 2, tmp_path / "log")
    finally:
        stop(holder)
    assert r.returncode != 0
    # each rank writes its line in one write; split on the prefix anyway, since the two share one stderr
    errors = ["dbtutor: error:" + e for e in r.stderr.split("dbtutor: error:")[1:]]
    assert len(errors) == 2 and all(f"output_dir {tmp_path / 'two'} is in use by another run (pid {holder.pid}" in e
                                    for e in errors), r.stderr[-3000:]
