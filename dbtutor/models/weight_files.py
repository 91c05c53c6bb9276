"""Read a model's JSON and weight files without trusting them: what is wrong with a file, in a few words, cheaply.

A safetensors file starts with an 8-byte length and a JSON header listing each tensor's dtype, shape and byte range;
reading only that header tells a complete file from a truncated, empty or foreign one without loading any weights.
A PyTorch .bin file is a zip archive whose directory sits at its end, so a cut file has none.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

MISSING, DAMAGED = "missing", "damaged"         # as model_check: a cut download or copy; damaged otherwise
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100 * 2 ** 20                      # safetensors' own limit on the header's size
WEIGHTS = {   # what each library's from_pretrained reads, in the order it looks for them
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                  "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json"),
    "transformers": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"),
}
CUT = "as an interrupted download or copy leaves it"


class BadFile(Exception):
    """What is wrong with a file (a phrase that follows its name), the kind, and a fix when the usual one does not
    fit; `file` names the file at fault when it is not the one asked about (a shard, a missing weights file)."""

    def __init__(self, problem: str, kind: str = DAMAGED, fix: str | None = None, file: str | None = None):
        super().__init__(problem)
        self.problem, self.kind, self.fix, self.file = problem, kind, fix, file


def _start(path: Path, size: int) -> bytes:
    """The first bytes, after telling an empty file, a Git LFS pointer or a saved web page from real content."""
    with open(path, "rb") as f:
        head = f.read(64)
    if size == 0:
        raise BadFile(f"is empty (0 bytes, {CUT})", MISSING)
    if head.startswith(b"version https://git-lfs"):
        raise BadFile("is a Git LFS pointer, not the file itself (a clone without git-lfs)", MISSING,
                      fix="run `git lfs pull` in the repository, or download the model with huggingface_hub")
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        raise BadFile("is a web page, not the file (a failed download saved its error page)", MISSING)
    return head


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or BadFile saying why not."""
    if not path.is_file():
        raise BadFile("is missing" + (" (a link to a file that is gone)" if path.is_symlink() else ""), MISSING)
    try:
        data = path.read_bytes()
        _start(path, len(data))
        obj = json.loads(data.decode("utf-8"))
    except OSError as e:
        raise BadFile(f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    except UnicodeDecodeError:
        raise BadFile("is not text (not UTF-8): not a JSON file") from None
    except json.JSONDecodeError as e:
        raise BadFile(f"is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadFile(f"holds a JSON {type(obj).__name__}, not an object")
    return obj


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor: (dtype, shape)} from a safetensors file's header, after checking the header is sound and the file
    is exactly as long as the header says (longer or shorter: BadFile)."""
    if not path.is_file():
        raise BadFile("is missing" + (" (a link to a file that is gone)" if path.is_symlink() else ""), MISSING)
    try:
        size = path.stat().st_size
        head = _start(path, size)
        n = int.from_bytes(head[:8], "little") if size >= 8 else -1
        if n < 2 or n > MAX_HEADER or (n > size - 8 and head[8:9] != b"{"):
            raise BadFile("is not a safetensors file (it does not start with a safetensors header)")
        if n > size - 8:
            raise BadFile(f"is truncated ({size:,} bytes, not even its whole header; {CUT})", MISSING)
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise BadFile(f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadFile("has a damaged header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise BadFile("has a damaged header (not a JSON object)")
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            ok = isinstance(a, int) and isinstance(b, int) and 0 <= a <= b and min(shape, default=0) >= 0
            ok = ok and (dtype not in DTYPE_BYTES or b - a == math.prod(shape) * DTYPE_BYTES[dtype])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise BadFile(f"has a damaged header (the entry of {name} is inconsistent)")
        tensors[name] = (dtype, shape)
        spans.append((a, b))
    end = 0
    for a, b in sorted(spans):
        if a != end:
            raise BadFile("has a damaged header (its tensors' byte ranges overlap or leave gaps)")
        end = b
    want = 8 + n + end
    if size < want:
        raise BadFile(f"is truncated ({size:,} of {want:,} bytes, {CUT})", MISSING)
    if size > want:
        raise BadFile(f"is longer than its header says ({size:,} bytes, {want:,} expected): damaged")
    return tensors


def check_torch_zip(path: Path) -> None:
    """A PyTorch .bin file (a zip archive) whose directory is intact; shapes are not read (that would unpickle)."""
    if not path.is_file():
        raise BadFile("is missing" + (" (a link to a file that is gone)" if path.is_symlink() else ""), MISSING)
    try:
        head = _start(path, path.stat().st_size)
        if head.startswith(b"\x80"):                 # the legacy (pre-zip) format: nothing cheap to check
            return
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except OSError as e:
        raise BadFile(f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    except zipfile.BadZipFile:
        if head.startswith(b"PK"):
            raise BadFile(f"is truncated (its zip directory, at the end, is missing; {CUT})", MISSING) from None
        raise BadFile("is not a PyTorch weights file") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise BadFile("is a zip archive but not a PyTorch weights file")


def variant_name(name: str, variant: str | None) -> str:
    """A weights file's name in a variant, as diffusers and transformers save it: model.safetensors ->
    model.fp16.safetensors, model.safetensors.index.json -> model.safetensors.index.fp16.json."""
    if not variant:
        return name
    head, tail = name.rsplit(".", 1)
    return f"{head}.{variant}.{tail}"


def weights_file(part_dir: Path, library: str, variant: str | None = None) -> Path:
    """The weights file (or shard index) that `library`'s from_pretrained will read from a part's folder: with a
    `variant` (model.variant) its files where the folder has them, else the main ones (a folder saved without
    variants loads as it is)."""
    names = (tuple(variant_name(n, variant) for n in WEIGHTS[library]) if variant else ()) + WEIGHTS[library]
    for name in names:
        if (part_dir / name).exists() or (part_dir / name).is_symlink():
            return part_dir / name
    main = WEIGHTS[library][0]
    variants = sorted(p.name for p in part_dir.glob(main.replace(".safetensors", ".*.safetensors")))
    if variants:
        other = variants[0].split(".")[-2]
        raise BadFile(f"holds only {variants[0]}, the {other} variant", MISSING, file=f"{part_dir.name}/",
                      fix=f"set model.variant={other} to load it, or download the main weights too")
    raise BadFile(f"is missing (and no other weights file is in {part_dir.name}/)", MISSING,
                  file=f"{part_dir.name}/{main}")


def file_variant(file: Path, variant: str | None) -> str | None:
    """The variant a weights file found by weights_file belongs to: `variant`, or None for the main weights."""
    return variant if variant and file.name in {variant_name(n, variant) for n in sum(WEIGHTS.values(), ())} else None


def weight_shapes(file: Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor: shape} of a safetensors file or of all shards an index lists, each file checked; None for .bin
    weights (checked as archives only). BadFile names the file at fault (file=) when it is a shard."""
    rel = lambda p: f"{p.parent.name}/{p.name}"                           # noqa: E731
    try:
        if not file.name.endswith(".index.json"):
            if file.suffix == ".safetensors":
                return {k: s for k, (_, s) in safetensors_header(file).items()}
            check_torch_zip(file)
            return None
        index = read_json(file)
    except BadFile as e:
        e.file = e.file or rel(file)
        raise
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadFile("has no weight_map (the shard of each tensor)", file=rel(file))
    shapes = {}
    for shard in sorted(set(map(str, weight_map.values()))):
        path = file.parent / shard
        try:
            if file.name.endswith(".safetensors.index.json"):
                shapes.update({k: s for k, (_, s) in safetensors_header(path).items()})
            else:
                check_torch_zip(path)
        except BadFile as e:
            e.file = rel(path)
            raise
    lost = sorted(k for k, shard in weight_map.items() if shapes and k not in shapes)
    if lost:
        raise BadFile(f"lists {lost[0]} in {weight_map[lost[0]]}, which does not hold it ({len(lost)} such tensors)",
                      file=rel(file))
    return shapes if file.name.endswith(".safetensors.index.json") else None
