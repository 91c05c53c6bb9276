"""Make the zip to upload to Colab or Google Drive: the course as git tracks it, in one top folder, its size printed.

    python tools/course_zip.py                         # dbtutor.zip, holding dbtutor/
    python tools/course_zip.py --gpu --out dbtutor.zip # its notebooks open on a T4 GPU runtime in Colab

Only the files `git ls-files` lists, as they are in the working tree: no .git (hundreds of MB of history), no work/
(runs, class images), nothing untracked. With --gpu the notebooks in the zip carry Colab's metadata for a GPU
runtime ("accelerator": "GPU", "colab": {"gpuType": "T4"}), so that Colab opens each of them on a T4 (the
repository's own notebooks stay without it: the toy course runs on any CPU). Each notebook's first cell takes the
zip from Colab's Files or from MyDrive, whatever its top folder is called (docs/gpu.md, "The course on Colab").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4"}}


def tracked(root: Path) -> list[str]:
    """The files git tracks in `root` that are in the working tree, as paths relative to it."""
    r = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"course_zip: {root} is not a git checkout ({r.stderr.strip()}); run it in your clone")
    return [name for name in r.stdout.split("\0") if name and (root / name).is_file()]


def for_gpu(notebook: bytes) -> bytes:
    """A notebook (.ipynb) with Colab's GPU runtime metadata added, written as Jupyter writes it."""
    nb = json.loads(notebook)
    nb["metadata"]["accelerator"] = GPU_METADATA["accelerator"]
    nb["metadata"]["colab"] = {**nb["metadata"].get("colab", {}), **GPU_METADATA["colab"]}
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def make_zip(out: Path, gpu: bool = False, top: str = "dbtutor", root: Path = ROOT) -> int:
    """Write the course's tracked files to `out` under `top`/ (into a temporary file renamed at the end: never a
    half-written zip); returns the number of files."""
    names = tracked(root)
    tmp = out.with_name(f".{out.name}.part")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                data = (root / name).read_bytes()
                if gpu and name.startswith("notebooks/") and name.endswith(".ipynb"):
                    data = for_gpu(data)
                z.writestr(zipfile.ZipInfo.from_file(root / name, f"{top}/{name}"), data, zipfile.ZIP_DEFLATED)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("dbtutor.zip"), help="the zip to write (default dbtutor.zip)")
    ap.add_argument("--gpu", action="store_true", help="notebooks open on a T4 GPU runtime in Colab")
    args = ap.parse_args(argv)
    n = make_zip(args.out, gpu=args.gpu, root=ROOT)
    print(f"{args.out}: {n} files, {args.out.stat().st_size / 1e6:.1f} MB"
          f"{', notebooks for a T4 GPU runtime' if args.gpu else ''}; upload it to Colab's Files or to MyDrive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
