"""The committed course notebooks: no outputs, the required opening cells, consecutive numbers, each .ipynb exactly
what `jupytext --sync` makes of its py:percent source (so nobody edits one without the other), and the cells the
notebooks share identical in each. Nothing here executes a notebook."""
from __future__ import annotations

import ast
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
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them (JupyterLab: Edit > Clear Outputs of All Cells; save)"
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


# ----------------------------------------------------------------------------- the .py sources (jupytext pairs)

SYNC = "edit the .py or the .ipynb, not one alone; then run `jupytext --sync notebooks/*.py`"


def test_every_notebook_has_one_text_source_and_jupyterlab_pairs_them():
    import jupytext.config
    assert sorted(p.name for p in NB_DIR.glob("*.py")) == [p.with_suffix(".py").name for p in NOTEBOOKS], \
        "notebooks/: every NN_topic.ipynb needs its NN_topic.py (py:percent), and no .py without its .ipynb"
    config = jupytext.config.load_jupytext_config(str(NOTEBOOKS[0]))
    formats = config.formats if config else None
    formats = ",".join(formats) if isinstance(formats, list) else formats      # a list in jupytext >= 1.17
    assert formats == "ipynb,py:percent", "notebooks/jupytext.toml must pair ipynb,py:percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_what_jupytext_makes_of_its_text_source(path):
    """Cell by cell (type, source, tags and other metadata), then byte for byte what `jupytext --sync` writes, which
    keeps the committed cell ids; and the .py is what jupytext writes from the .ipynb."""
    import jupytext
    import nbformat
    from jupytext.combine import combine_inputs_with_outputs

    py = path.with_suffix(".py")
    source, committed = jupytext.read(py), nbformat.read(path, as_version=4)
    nbformat.validate(committed)                         # among others: ids present, unique and well-formed
    assert len(source.cells) == len(committed.cells), \
        f"{path.name} has {len(committed.cells)} cells, {py.name} {len(source.cells)}: {SYNC}"
    for i, (a, b) in enumerate(zip(source.cells, committed.cells)):
        assert (a.cell_type, a.source, a.metadata) == (b.cell_type, b.source, b.metadata), \
            f"{path.name} cell {i} differs from {py.name}: {SYNC}"
    synced = jupytext.writes(combine_inputs_with_outputs(source, committed, fmt="py:percent"), "ipynb")
    assert path.read_text(encoding="utf-8") == synced.rstrip("\n") + "\n", f"{path.name}: {SYNC}"
    assert py.read_text(encoding="utf-8") == jupytext.writes(committed, "py:percent"), f"{py.name}: {SYNC}"


def test_saving_in_jupyterlab_writes_both_files_and_keeps_the_cell_ids(tmp_path):
    """jupytext's contents manager (what JupyterLab saves through): an edited cell lands in the .ipynb and the .py,
    every cell id stays, and an unedited save rewrites neither file."""
    import shutil

    from jupytext import TextFileContentsManager

    folder = tmp_path / "notebooks"
    shutil.copytree(NB_DIR, folder)
    name = NOTEBOOKS[0].name
    cm = TextFileContentsManager(root_dir=str(tmp_path))
    model = cm.get(f"notebooks/{name}")
    cm.save(model, f"notebooks/{name}")
    for p in (NOTEBOOKS[0], NOTEBOOKS[0].with_suffix(".py")):
        assert (folder / p.name).read_bytes() == p.read_bytes(), f"saving {name} unedited changed {p.name}"
    ids = [c["id"] for c in load(NOTEBOOKS[0])["cells"]]
    model["content"].cells[0].source += "\n\nAn added sentence."
    cm.save(model, f"notebooks/{name}")
    saved = load(folder / name)["cells"]
    assert [c["id"] for c in saved] == ids
    assert text(saved[0]).endswith("An added sentence.")
    assert "# An added sentence." in (folder / name).with_suffix(".py").read_text(encoding="utf-8")


def _overrides_block(cells: list[str]) -> str | None:
    """The training config dict `overrides = {...}` of a notebook (from its opening line to its closing brace)."""
    for src in cells:
        m = re.search(r"^overrides = \{\n.*?^\}$", src, re.M | re.S)
        if m:
            return m.group(0)
    return None


def test_cells_the_notebooks_share_are_identical():
    """The guarded Colab install cell, the parameters cell's head and tail in all; the training overrides where they
    are (a run made in one notebook is found by the next only with the very same config); the judge cell."""
    cells = {p.name[:2]: [text(c) for c in load(p)["cells"]] for p in NOTEBOOKS}
    ref = cells["01"]
    head = ref[3][: ref[3].index("\n", ref[3].index("\nREG_DIR = ") + 1) + 1]
    tail = ref[3][ref[3].index("# device and dtype, picked automatically"):]
    for nb, cs in cells.items():
        assert cs[2] == ref[2], f"notebook {nb}: the Colab install cell differs from 01's (they must be identical)"
        assert cs[3].startswith(head), f"notebook {nb}: the parameters cell must start as 01's does, up to REG_DIR"
        assert cs[3].endswith(tail), f"notebook {nb}: the parameters cell must end as 01's does (device and dtype)"
    blocks = {nb: _overrides_block(cs) for nb, cs in cells.items()}
    assert sorted(nb for nb, b in blocks.items() if b) == ["02", "04", "05", "06", "07"]
    assert len({b for b in blocks.values() if b}) == 1, "the `overrides = {...}` dicts differ between notebooks"
    judge = {nb: [c for c in cs if c.startswith("# The toy world's judge")] for nb, cs in cells.items()}
    assert sorted(nb for nb, js in judge.items() if js) == ["01", "04", "05", "06"]
    assert len({j for js in judge.values() for j in js}) == 1, "the judge cells differ between notebooks"
