"""tools/course_zip.py: the zip to upload to Colab holds what git tracks under one top folder, nothing else; with
--gpu its notebooks ask Colab for a T4 runtime; its size is printed."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import zipfile

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("course_zip", ROOT / "tools" / "course_zip.py")
course_zip = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course_zip)


@pytest.fixture
def repo(tmp_path):
    """A small git checkout as a learner's clone looks after working in it: tracked files, a work folder, an
    untracked file."""
    root = tmp_path / "dbtutor"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'dbtutor'\n")
    nb = {"cells": [], "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "01_x.ipynb").write_text(json.dumps(nb, indent=1) + "\n")
    (root / ".gitignore").write_text("work/\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    (root / "work" / "runs").mkdir(parents=True)
    (root / "work" / "runs" / "model.safetensors").write_bytes(b"0" * 1000)
    (root / "notes.txt").write_text("not tracked")
    return root


def test_the_zip_holds_the_tracked_files_under_one_top_folder(repo, tmp_path):
    out = tmp_path / "out" / "dbtutor.zip"
    out.parent.mkdir()
    assert course_zip.make_zip(out, root=repo) == 3
    with zipfile.ZipFile(out) as z:
        names = sorted(z.namelist())
        assert names == ["dbtutor/.gitignore", "dbtutor/notebooks/01_x.ipynb", "dbtutor/pyproject.toml"]
        assert z.read("dbtutor/notebooks/01_x.ipynb") == (repo / "notebooks" / "01_x.ipynb").read_bytes()
    assert list(out.parent.iterdir()) == [out]                   # no temporary file left


def test_with_gpu_the_notebooks_ask_colab_for_a_t4(repo, tmp_path):
    out = tmp_path / "gpu.zip"
    course_zip.make_zip(out, gpu=True, top="dbtutor-main", root=repo)
    with zipfile.ZipFile(out) as z:
        meta = json.loads(z.read("dbtutor-main/notebooks/01_x.ipynb"))["metadata"]
        assert z.read("dbtutor-main/pyproject.toml") == (repo / "pyproject.toml").read_bytes()
    assert meta["accelerator"] == "GPU" and meta["colab"] == {"gpuType": "T4"}
    assert meta["kernelspec"] == {"name": "python3"}


def test_the_command_prints_the_size_and_refuses_a_folder_without_git(repo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(course_zip, "ROOT", repo)
    out = tmp_path / "x.zip"
    assert course_zip.main(["--out", str(out), "--gpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 3 files, 0.0 MB") and "T4" in line
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit, match="is not a git checkout"):
        course_zip.make_zip(tmp_path / "y.zip", root=tmp_path / "plain")


def test_the_course_s_own_notebooks_carry_no_gpu_metadata():
    """The toy course runs on any CPU: only the zip made with --gpu asks Colab for a GPU."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
        assert "accelerator" not in meta and "gpuType" not in meta.get("colab", {}), path.name
