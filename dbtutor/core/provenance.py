"""Where a measurement was made: date, the project's commit, library versions and the machine, for result files."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from .config import ROOT


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict:
    """The checked-out commit and whether tracked files differ from it (None outside a git checkout)."""
    head = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no") if head else None
    return {"commit": head, "uncommitted_changes": bool(changed) if changed is not None else None}


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    """A dict to store next to a result: when, on which code, with which libraries, on which machine."""
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "peft"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "?")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), **commit(),
            "versions": versions, "machine": {"cpu": cpu_name(),
                                              "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}}


def shown_path(path) -> str:
    """A path as a result file should record it: relative to the project folder when inside it (a hub id or a
    path elsewhere stays as it is)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(path)


def shown_paths(flat: dict) -> dict:
    """A flat config with its absolute paths shown relative to the project folder (see shown_path)."""
    return {k: shown_path(v) if isinstance(v, str) and Path(v).is_absolute() else v for k, v in flat.items()}
