"""The committed course notebooks: no outputs, the required opening cells, consecutive numbers, each .ipynb exactly
what `jupytext --sync` makes of its py:percent source (so nobody edits one without the other), and the cells the
notebooks share identical in each. Nothing here executes a notebook."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT_ = Path(__file__).resolve().parent.parent


def _load_tool():
    """tools/set_repo_url.py as a module (tools/ is no package)."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("tools_set_repo_url", ROOT_ / "tools" / "set_repo_url.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tools_set_repo_url"] = module
    spec.loader.exec_module(module)


_load_tool()

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
HEAD = ("PROFILE", "WORK_ON_DRIVE", "SUBJECT_DIR", "CLASS_NOUN")    # course.setup's first arguments, in this order
COURSE_BLOCK, OWN_BLOCK = "# the course's runs:", "# this notebook"   # the parameters cell's two parts after HEAD


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
    title, learn, install, params, setup = cells[:5]
    assert title["cell_type"] == "markdown" and text(title).startswith("# "), f"{path.name}: cell 0 is the title"
    assert "colab-badge.svg" in text(title), f"{path.name}: the title needs an Open in Colab badge"
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
    for name in HEAD:
        assert re.search(rf"^{name} = ", p, re.M), f"{path.name}: the parameters cell must set {name}"
    assert f"course.setup({', '.join(HEAD)}" in text(setup), \
        f"{path.name}: cell 4 calls course.setup({', '.join(HEAD)}, ...)"


def _params(cell_text: str) -> dict:
    """NAME -> (value source, comment) of each top-level assignment in a parameters cell."""
    out = {}
    for line in cell_text.splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*) = (.*?)(?:\s+# (.*))?$", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3) or "")
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_setting_the_cell_leaves_to_the_profile_reaches_setup_and_says_its_values(path):
    """A setting set to None in the parameters cell is passed to course.setup under its own name, and its comment
    gives each profile's value as dbtutor.course.PROFILES has it ("by GPU" where a GPU decides)."""
    from dbtutor.course.profiles import GPU_KEYS, PROFILES
    cells = load(path)["cells"]
    params, setup = _params(text(cells[3])), text(cells[4])
    for name, (value, comment) in params.items():
        if value != "None" or name in ("PROFILE", "SUBJECT_DIR", "WORK_ON_DRIVE"):
            continue
        key = name.lower()
        assert name in HEAD or f"{key}={name}" in setup, \
            f"{path.name}: {name} = None must reach course.setup({key}={name})"
        m = re.search(r"\(toy ([^,]+), sd15 ([^)]+)\)", comment)
        assert m, f"{path.name}: {name}'s comment must say its values: (toy X, sd15 Y)"
        for profile, said in zip(("toy", "sd15"), m.groups()):
            if said == "by GPU":
                assert profile == "sd15" and key in GPU_KEYS.values()
                continue
            assert said == str(PROFILES[profile][key]), f"{path.name}: {name} is {PROFILES[profile][key]} in {profile}"


def _code_lines(cell) -> list[str]:
    return [ln for ln in text(cell).splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_shared_setup_is_under_a_quarter_of_the_code(path):
    """The shared setup, the install cell and the course.setup call (paths, device, profile, Drive, measuring
    are package calls), is under a quarter of a notebook's code lines: the rest is what it teaches. (The
    parameters cell between them is the notebook's settings, shown on purpose.)"""
    code = [c for c in load(path)["cells"] if c["cell_type"] == "code"]
    setup = len(_code_lines(code[0])) + len(_code_lines(code[2]))
    total = sum(len(_code_lines(c)) for c in code)
    assert setup / total < 0.25, f"{path.name}: setup is {setup} of {total} code lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_parse(path):
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            try:
                ast.parse(text(cell))
            except SyntaxError as e:
                pytest.fail(f"{path.name} cell {i}: {e}")


def test_badges_and_install_cells_follow_the_one_repository_url(tmp_path):
    """pyproject.toml's [project.urls] Repository is the one place: each badge and each install cell's REPO agree
    with it, and no notebook names any other repository. tools/set_repo_url.py rewrites both files of a pair."""
    import shutil
    from tools_set_repo_url import badge, read_url, update_notebooks, write_url
    url = read_url()
    for path in NOTEBOOKS:
        cells = load(path)["cells"]
        assert badge(url, path.name)[2:] in text(cells[0]), f"{path.name}: badge does not follow pyproject.toml"
        assert f'REPO = "{url}"' in text(cells[2]), f"{path.name}: REPO does not follow pyproject.toml"
        if not url:
            assert "github.com" not in path.read_text(encoding="utf-8"), f"{path.name} names a repository"
    folder, pyproject = tmp_path / "notebooks", tmp_path / "pyproject.toml"
    shutil.copytree(NB_DIR, folder)
    shutil.copy(ROOT / "pyproject.toml", pyproject)
    write_url("https://github.com/someone/dbtutor", pyproject)
    assert read_url(pyproject) == "https://github.com/someone/dbtutor"
    assert len(update_notebooks("https://github.com/someone/dbtutor", folder)) == len(NOTEBOOKS)
    nb = load(folder / NOTEBOOKS[0].name)
    assert "colab.research.google.com/github/someone/dbtutor/blob/main/notebooks/" in text(nb["cells"][0])
    assert 'REPO = "https://github.com/someone/dbtutor"' in text(nb["cells"][2])
    assert "REPO = \"https://github.com/someone/dbtutor\"" in (folder / NOTEBOOKS[0].with_suffix(".py").name).read_text()
    write_url("", pyproject)
    assert read_url(pyproject) == "" and "[project.urls]" not in pyproject.read_text()


def test_notebooks_write_only_under_the_work_folder():
    """Paths the notebooks write are built from C.work (WORK: work/notebooks by default, gitignored, or Drive)."""
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "work/" in gitignore
    for path in NOTEBOOKS:
        src = "\n".join(text(c) for c in load(path)["cells"] if c["cell_type"] == "code")
        for m in re.finditer(r"\.(?:save|write_text|write_bytes|mkdir)\(|save_figure\(|shutil\.(?:copy|rmtree)\(", src):
            line = src[src.rfind("\n", 0, m.start()) + 1: src.find("\n", m.end())]
            assert any(w in line for w in ("C.work", "demo_paths", "image_dir", "CACHE_DEMO")), \
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


def test_cells_the_notebooks_share_are_identical():
    """The guarded Colab install cell, and the parameters cell's head (the profile, the photos, the class noun,
    Drive); the training config itself comes from dbtutor.course, so every notebook trains the same runs."""
    cells = {p.name[:2]: [text(c) for c in load(p)["cells"]] for p in NOTEBOOKS}
    ref = cells["01"]
    head = ref[3][: ref[3].index(COURSE_BLOCK)]
    for nb, cs in cells.items():
        assert cs[2] == ref[2], f"notebook {nb}: the Colab install cell differs from 01's (they must be identical)"
        assert cs[3].startswith(head), f"notebook {nb}: the parameters cell must start as 01's does"
        assert "overrides = {" not in "\n".join(cs), f"notebook {nb}: training configs come from C.overrides"


def test_the_settings_that_name_a_run_are_the_courses_in_every_parameters_cell():
    """A parameter for a setting that names a run (dbtutor.course.choices.NAMES_A_RUN: setup keeps it for the next
    notebooks) sits in the cell's course block, on the same line in every notebook that shows it; the notebook's own
    settings sit below "# this notebook". So a learner sees which values the next notebooks follow."""
    from dbtutor.course.choices import REMEMBERED
    lines: dict[str, set] = {}
    for path in NOTEBOOKS:
        cell = text(load(path)["cells"][3])
        assert cell.count(COURSE_BLOCK) == 1 and cell.count(OWN_BLOCK) == 1 and \
            cell.index(COURSE_BLOCK) < cell.index(OWN_BLOCK), f"{path.name}: the parameters cell needs both blocks"
        course_part = cell[cell.index(COURSE_BLOCK):cell.index(OWN_BLOCK)]
        own_part = cell[cell.index(OWN_BLOCK):]
        for name in _params(course_part):
            assert name.lower() in REMEMBERED, f"{path.name}: {name} is this notebook's, not the course's: move it"
            lines.setdefault(name, set()).add(next(ln for ln in course_part.splitlines() if ln.startswith(name + " ")))
        for name in _params(own_part):
            assert name.lower() not in REMEMBERED, f"{path.name}: {name} names a run: it belongs to the course block"
    assert lines, "no notebook shows a setting of the course's runs"
    for name, seen in lines.items():
        assert len(seen) == 1, f"{name} is written differently in different notebooks: {sorted(seen)}"
