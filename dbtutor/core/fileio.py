"""Atomic, pickle-free file writes and reads: a crash never leaves a half-written file behind."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .hooks import fault_point

# temp files are hidden (so image counts ignore them) and carry the writer's pid (so leftovers of a killed
# process can be told apart from the live temp files of another process writing into the same folder)
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp")
_UMASK = os.umask(0o022)
os.umask(_UMASK)                      # mkstemp makes 0600 files; a finished file gets the usual permissions


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success fsync and rename it over `path` (else delete it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        fault_point("atomic")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """fsync every file under `folder`, then the folders: call before renaming a freshly written folder into place."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":      # on Windows os.kill(pid, 0) would end that process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files that a killed process left in `folder` (never those of a process still running)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def write_text(path, text: str):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def save_image(image, path):
    """Save a PIL image atomically; the format follows the final file's extension (none: PNG)."""
    from PIL import Image
    path = Path(path)
    ext = path.suffix.lower()
    fmt = (Image.registered_extensions().get(ext) or ext.lstrip(".").upper()) if ext else "PNG"
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)


def save_torch(obj, path):
    """torch.save atomically. Only tensors, numbers, strings, lists and dicts: it must load with weights_only=True."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path):
    """Load a file written by save_torch without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
