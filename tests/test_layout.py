"""The package's layout: the four stages on top, the machinery in rooms below, imports that run one way (the
import-linter contracts of pyproject.toml, which a forbidden import breaks), no module over 300 lines."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

STAGES = {"data.py", "latent_cache.py", "regularization.py", "train.py"}
ROOMS = {"core", "models", "runs", "measuring", "sharing", "course", "commands", "toyworld"}
LINT = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root) -> subprocess.CompletedProcess:
    """import-linter on the package in `root`, with `root`'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True)


def test_the_four_stages_are_on_top_and_the_rest_in_rooms():
    top = {p.name for p in (ROOT / "dbtutor").iterdir() if not p.name.startswith(("_", "."))}
    assert top == STAGES | ROOMS
    for room in ROOMS:
        assert (ROOT / "dbtutor" / room / "__init__.py").is_file()


def test_the_import_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("where, line, broken", [
    ("core/errors.py", "from ..train import train", "imports run one way"),           # machinery importing a stage
    ("data.py", "from .latent_cache import cache_latents", "imports run one way"),    # a stage importing one above
    ("models/lora.py", "from ..sharing import card", "imports run one way"),         # a room importing one above
    ("runs/checkpoint.py", "from . import resume", "no import circle"),               # resume imports checkpoint
])
def test_a_forbidden_import_breaks_the_contract(tmp_path, where, line, broken):
    shutil.copytree(ROOT / "dbtutor", tmp_path / "dbtutor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint(tmp_path).returncode == 0                  # the copy keeps the contracts, before the change
    with open(tmp_path / "dbtutor" / where, "a") as f:
        f.write(f"\n\ndef _forbidden():\n    {line}  # noqa\n")
    out = lint(tmp_path)
    assert out.returncode != 0 and f"{broken}" in out.stdout and "BROKEN" in out.stdout.upper()


def _module_graph() -> dict[str, set[str]]:
    """Every module of dbtutor and the modules of dbtutor it imports (at the top or inside a function)."""
    import grimp
    graph = grimp.build_graph("dbtutor", cache_dir=None)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules if m.startswith("dbtutor")}


def test_no_module_imports_itself_back():
    """No import circle anywhere in the package (the contracts check between rooms and between a room's modules;
    this checks every module against every other)."""
    graph, done = _module_graph(), set()

    def visit(m, path):
        if m in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for n in sorted(graph.get(m, ())):
            visit(n, path + [m])
        done.add(m)
    for m in sorted(graph):
        visit(m, [])


@pytest.mark.parametrize("folder", ["dbtutor", "bench", "tools"])
def test_every_file_is_at_most_300_lines_and_opens_with_what_it_holds(folder):
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 300, f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines"
        doc = ast.get_docstring(ast.parse(text))
        assert doc and doc.strip(), f"{path.relative_to(ROOT)} opens with no docstring"
