"""The declared dependency ranges: .ci/lowest-constraints.txt pins the lower bound of each, and CI's second test run
has exactly those versions installed."""
import importlib.metadata
import os

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")            # Python >= 3.11
CONSTRAINTS = ROOT / ".ci" / "lowest-constraints.txt"
NOT_AT_LOWER_BOUND = {"torch": "2.13.0"}            # the only CPU build on this project's machines
PINNED_EXTRAS = ("tensorboard",)                    # extras that the lowest run installs too (through `dev`)


def pins() -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines())
    return dict(line.lower().split("==") for line in lines if line)


def test_the_lowest_constraints_pin_the_lower_bound_of_every_dependency():
    lower = {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + [d for e in PINNED_EXTRAS for d in project["optional-dependencies"][e]]:
        req = Requirement(dep)
        bound = [s.version for s in req.specifier if s.operator == ">="]
        assert len(bound) == 1, f"pyproject.toml: {dep} needs one lower bound (>=)"
        lower[req.name.lower()] = Version(bound[0])
    lower.update({name: Version(v) for name, v in NOT_AT_LOWER_BOUND.items()})
    assert {name: Version(v) for name, v in pins().items()} == lower


@pytest.mark.skipif(not os.environ.get("DBTUTOR_LOWEST"), reason="set by CI's run with the lowest versions")
def test_the_lowest_versions_are_installed():
    installed = {name: Version(Version(importlib.metadata.version(name)).public) for name in pins()}   # no +cpu
    assert installed == {name: Version(v) for name, v in pins().items()}
