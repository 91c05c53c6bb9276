"""The committed course notebooks: no outputs, the required opening cells, consecutive numbers, and exactly what
tools/build_notebooks.py writes (so nobody edits one without the other). Nothing here executes a notebook."""
from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
COLAB = "https://colab.research.google.com/github/dbtutor/dbtutor/blob/main/notebooks/{}"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def text(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def build_script():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebooks_exist_and_are_numbered_consecutively():
    names = [p.name for p in NOTEBOOKS]
    assert names, "no notebooks in notebooks/"
    for n in names:
        assert NAME.match(n), f"{n}: notebooks are named NN_topic.ipynb (lower case, underscores)"
    numbers = [int(NAME.match(n).group(1)) for n in names]
    assert numbers == list(range(1, len(names) + 1)), f"numbers must run 01, 02, ... without gaps: {names}"
    assert "06_with_and_without_prior.ipynb" in names     # the browser test drives this one


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs_and_no_execution_counts(path):
    nb = load(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them (rebuild the notebook)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{path.name} cell {i} carries execution timing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_required_opening_cells(path):
    cells = load(path)["cells"]
    title, learn, install, params = cells[:4]
    assert title["cell_type"] == "markdown" and text(title).startswith("# "), f"{path.name}: cell 0 is the title"
    assert COLAB.format(path.name) in text(title) and "colab-badge.svg" in text(title), \
        f"{path.name}: the title needs an Open in Colab badge linking to this notebook"
    assert learn["cell_type"] == "markdown" and "What you will learn" in text(learn)
    src = text(install)
    assert install["cell_type"] == "code" and 'if "google.colab" in sys.modules:' in src, \
        f"{path.name}: cell 2 is the guarded install cell"
    # outside Colab the install cell does nothing: only `import sys` runs outside the guard
    top = ast.parse(src).body
    assert [type(n).__name__ for n in top] == ["Import", "If"], f"{path.name}: install cell does more than the guard"
    assert params["cell_type"] == "code" and params["metadata"].get("tags") == ["parameters"], \
        f"{path.name}: cell 3 is the parameters cell, tagged 'parameters'"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [3], f"{path.name}: exactly one parameters cell (found at {tagged})"
    p = text(params)
    for name in ("PRETRAINED", "SUBJECT_DIR", "INSTANCE_PROMPT", "CLASS_PROMPT", "MAX_STEPS", "PRIOR_LOSS_WEIGHT",
                 "NUM_REG_IMAGES", "SEEDS", "WORK", "DEVICE", "DTYPE"):
        assert re.search(rf"^{name}\b.*=", p, re.M), f"{path.name}: the parameters cell must set {name}"
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in p
    assert "dbtutor.pick_device()" in p


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_parse(path):
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            try:
                ast.parse(text(cell))
            except SyntaxError as e:
                pytest.fail(f"{path.name} cell {i}: {e}")


def test_colab_install_cell_keeps_the_preinstalled_torch(monkeypatch):
    """In Colab the cell installs dbtutor with the torch already there pinned: pip never swaps it for another build."""
    import importlib.metadata
    import subprocess
    import sys
    import types
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: None)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(text(load(NOTEBOOKS[0])["cells"][2]), {})
    pip = [c for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert len(pip) == 1 and "/content/dbtutor" in pip[0]
    assert f"torch=={importlib.metadata.version('torch')}" in pip[0]


def test_generator_writes_the_committed_notebooks_byte_for_byte():
    rendered = build_script().render_all()
    assert sorted(rendered) == [p.name for p in NOTEBOOKS], "notebooks/ and tools/build_notebooks.py list different files"
    for name, content in rendered.items():
        assert (NB_DIR / name).read_text(encoding="utf-8") == content, \
            f"{name} differs from what tools/build_notebooks.py writes: edit the script and run it"


def test_notebooks_write_only_under_the_work_folder():
    """Paths the notebooks write are built from WORK (ROOT/work/notebooks by default, gitignored)."""
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "work/" in gitignore
    for path in NOTEBOOKS:
        src = "\n".join(text(c) for c in load(path)["cells"] if c["cell_type"] == "code")
        assert 'dbtutor.ROOT / "work/notebooks"' in src
        for m in re.finditer(r'"(?:output_dir|model\.data\.regularization_dir)":\s*([^,\n}]+)', src):
            assert "WORK" in m.group(1) or "REG_DIR" in m.group(1), f"{path.name}: {m.group(0)} is not under WORK"
        for m in re.finditer(r"\.(?:save|write_text|write_bytes|mkdir)\(|save_figure\(|shutil\.(?:copy|rmtree)\(", src):
            line = src[src.rfind("\n", 0, m.start()) + 1: src.find("\n", m.end())]
            assert any(w in line for w in ("WORK", "demo_paths", "image_dir", "CACHE_DEMO")), \
                f"{path.name}: writes outside WORK? {line.strip()}"
