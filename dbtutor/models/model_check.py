"""Check a diffusers Stable Diffusion pipeline folder (or a hub id's cached download) before loading it.

A model folder is often damaged: a cut download leaves a short or empty weights file, a hand copy misses a part,
an edited config has a typo or sizes its weights do not have, a clone without git-lfs holds pointers instead of
weights. Loading such a folder ends deep inside diffusers or transformers, in a traceback or (tokenizer without its
config) an OverflowError. Here every file the loaders read is checked first, cheaply: the JSON files parse, each
safetensors file is as long as its header says, the shapes in that header are the ones the config builds (built on
the meta device, no memory), the tokenizer and the text encoder agree, and the parts fit each other. The first
problem is one line (ConfigError): the part, the file, what is wrong and what to do. The checks of each part are
in part_checks.py; this module runs them on the folder, words the message and its advice, and remembers the
folders it found sound.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from .model_source import SD, locate
from .part_checks import (FOREIGN, MISMATCH, PARTS, Damage, check_fit, check_index, check_scheduler,
                          check_tokenizer, check_weights)
from .weight_files import MISSING

RUN_MARKS = ("history.json", "dreambooth.yaml")                          # a pipeline `dbtutor train` saved


def check_folder(folder: Path, parts=tuple(PARTS), variant: str | None = None) -> None:
    """Every check of part_checks.py for `parts` of the folder (`variant`'s weights where it has them); Damage on the
    first problem."""
    index = check_index(folder)
    found = {}
    for part in parts:
        library, cls = index[part]
        if part == "tokenizer":
            found[part] = check_tokenizer(folder)
        elif part == "scheduler":
            check_scheduler(folder, cls)
        else:
            found[part] = check_weights(folder, part, library, cls, variant)
    check_fit(found)


def advice(d: Damage, folder: Path, entry: Path | None) -> str:
    """What to do, by the kind of damage and where the folder came from (a hub download, a dbtutor run, a copy)."""
    if d.fix:
        return d.fix
    if d.kind == FOREIGN:
        return f"use {SD} instead, such as data/models/toyworld"
    if entry is not None:           # huggingface_hub fetches a file that is absent, and trusts one that is there
        if _absent(folder, d):
            return (f"run again while online (HF_HUB_OFFLINE unset) to finish the download, or delete {entry} to "
                    "download it afresh")
        return f"delete {entry} and run again while online to download it afresh"
    if all((folder / n).exists() for n in RUN_MARKS):
        return ("this pipeline was saved by `dbtutor train`: train it again (trainer.resume=false), or restore the "
                "folder from a copy")
    if d.kind == MISSING:
        return f"download or copy the model again (delete the incomplete folder {folder} first)"
    if d.kind == MISMATCH:
        return "these files do not belong together: restore the originals, or download the model again"
    return f"restore it from the original, or download the model again (delete {folder} first)"


def _absent(folder: Path, d: Damage) -> bool:
    return d.kind == MISSING and not (folder / d.file).exists()


def message(label: str, d: Damage, folder: Path, entry: Path | None = None) -> str:
    where = "" if entry is None or d.kind == FOREIGN else \
        f"its cached download is {'incomplete' if _absent(folder, d) else 'damaged'}: "
    return f"{label}: {where}{d.part}: {d.file} {d.problem}; {advice(d, folder, entry)}"


_CHECKED: set = set()       # (folder, parts, the files' sizes and times) already found sound in this process


def _signature(folder: Path, parts) -> tuple:
    files = [folder / "model_index.json"] + [f for p in parts if (folder / p).is_dir() for f in (folder / p).iterdir()]
    stats = []
    for f in sorted(files):
        try:
            st = f.stat()
            stats.append((f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((f.relative_to(folder).as_posix(), None, None))
    return str(folder.resolve()), tuple(parts), tuple(stats)


def check_model(pretrained, name: str = "model.pretrained", parts=tuple(PARTS), variant: str | None = None) -> Path:
    """Check a pipeline folder or hub id (fetched in `variant`) before loading it; return the local folder to load.
    ConfigError, in one line, on the first problem. A folder found sound is not read again until a file changes."""
    try:
        folder, entry = locate(pretrained, name, variant)
        key = (_signature(folder, parts), variant)
        if key in _CHECKED:
            return folder
        check_folder(folder, parts, variant)
    except Damage as d:
        raise ConfigError(message(str(pretrained), d, folder, entry)) from None
    except OSError as e:            # a folder or file we may not read (permissions), a disk error
        raise ConfigError(f"{pretrained}: {e.filename or 'a file of it'} cannot be read ({type(e).__name__}: "
                          f"{e.strerror or e}); check its permissions, or copy the model again") from None
    _CHECKED.add(key)
    return folder
