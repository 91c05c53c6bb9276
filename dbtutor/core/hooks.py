"""The test hooks, inert unless the environment asks: fault points that stop a run at an exact place, a log of
what each training process generated, encoded and drew, and the CUDA branches taken on a CPU.

    DBTUTOR_FAULT=<point>:<n>[:INT]   fault_point: the n-th pass of a named point kills this process (or Ctrl-C)
    DBTUTOR_RANK_LOG=<folder>         RunHooks: each training process writes rank_<r>.json into the folder
    DBTUTOR_SIMULATE_CUDA=1           device_kind: a CPU counts as CUDA for the precision decisions

tests/test_fault_injection.py and tests/test_distributed.py use the first two, the fp16 tests and the sd15 notebook
test the third; nothing else does. The training loop reaches them through one RunHooks object (drew, step_done,
finish), so its body reads as the algorithm.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

FAULT_ENV = "DBTUTOR_FAULT"
RANK_LOG = "DBTUTOR_RANK_LOG"   # a folder: each process writes rank_<r>.json (what it generated, encoded, drew)
SIMULATE_CUDA = "DBTUTOR_SIMULATE_CUDA"   # "1": a CPU device counts as CUDA for the precision decisions
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """TEST HOOK, inert unless the environment sets DBTUTOR_FAULT=<name>:<n>[:INT].

    The n-th time this process passes the named point it sends itself SIGKILL (or SIGINT with ':INT'), so that
    tests/test_fault_injection.py can stop a real run at an exact place. Points: atomic (a temp file is written,
    not yet renamed), reg (a class image saved), cache (a latent entry saved), ckpt (a checkpoint half written),
    pipeline (the output pipeline written, then after each part swapped in), step (a training step done)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, n, *how = spec.split(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(n):
        os.kill(os.getpid(), signal.SIGINT if how == ["INT"] else getattr(signal, "SIGKILL", signal.SIGTERM))


def device_kind(device) -> str:
    """The type of `device` (a torch.device or its name) as the CUDA decisions see it: its own type, except 'cuda'
    for a CPU under DBTUTOR_SIMULATE_CUDA=1 (TEST HOOK).

    The code asks this, and only this, wherever a GPU run differs from a CPU run in precision: float16 training
    allowed (check_precision), accelerate's GradScaler (make_accelerator), frozen weights in half (half_frozen),
    float16 autocast and float16 pipelines for sampling (pipeline.sample, sampling_dtype), accelerate's own gradient
    clipping (train.clip_gradients). So CI takes every one of those branches with the tensors on the CPU; autocast
    then runs on the tensors' own device type, 'cpu', in float16, as it runs on 'cuda' on a GPU. Nothing else
    changes: a GPU's kernels, memory and speed are not simulated."""
    kind = torch.device(device).type
    return "cuda" if kind == "cpu" and os.environ.get(SIMULATE_CUDA) == "1" else kind


class RunHooks:
    """One training process's test hooks: the 'step' fault point, and the record DBTUTOR_RANK_LOG asks for.

    `reg_written`: the class images this process generated; `sources`: its latent sources (each counts the images
    it encoded). The loop reports what it drew (drew), that a step is done (step_done), and the end (finish)."""

    def __init__(self, rank: int, world: int, reg_written: list[Path], sources: list):
        self.rank, self.world = rank, world
        self.reg_written, self.sources = reg_written, sources
        self.drawn = []                 # per step and source: [step, source, the image indices this process used]

    def drew(self, step: int, picked: list[list[int]]) -> None:
        """`picked[k]`: the indices of the images of source k this process used at `step`."""
        self.drawn += [[step, k, indices] for k, indices in enumerate(picked)]

    def step_done(self) -> None:
        fault_point("step")

    def finish(self, validated: list) -> None:
        """Write rank_<r>.json into DBTUTOR_RANK_LOG's folder, if it is set."""
        folder = os.environ.get(RANK_LOG)
        if not folder:
            return
        record = {"rank": self.rank, "world_size": self.world, "reg_written": [p.name for p in self.reg_written],
                  "encoded": sum(s.encoded for s in self.sources), "drawn": self.drawn, "validated": validated}
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank_{self.rank}.json").write_text(json.dumps(record))   # a test's log: no atomic write
