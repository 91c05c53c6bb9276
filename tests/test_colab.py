"""The Colab route without a kernel: the notebooks' install cell run as Colab runs it (a temporary /content and
Drive, a stand-in google.colab, pip recorded instead of run) from each way in, rerun, and with nothing to install;
and dbtutor.course.colab keeping the course and the hub cache in Drive."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

INSTALL_CELL = "".join(json.loads((ROOT / "notebooks" / "01_base_model_and_prior.ipynb").read_text())["cells"][2]
                       ["source"])
REAL_RUN = subprocess.run


class Colab:
    """A Colab runtime for the install cell: `content` (wiped by `new_runtime`), a `drive` that stays, and what the
    cell did: Drive mounts asked for, pip installs, git clones."""

    def __init__(self, tmp: Path, monkeypatch):
        self.content, self.drive, self.mp = tmp / "content", tmp / "drive", monkeypatch
        self.content.mkdir()
        self.drive.mkdir()
        self.mounts, self.pips, self.clones = [], [], []
        monkeypatch.setenv("DBTUTOR_COLAB_CONTENT", str(self.content))
        monkeypatch.setattr(subprocess, "run", self._run)
        drive = types.ModuleType("google.colab.drive")
        drive.mount = self._mount
        colab = types.ModuleType("google.colab")
        colab.drive = drive
        colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: None)
        google = types.ModuleType("google")
        google.colab = colab
        for name, module in {"google": google, "google.colab": colab, "google.colab.drive": drive}.items():
            monkeypatch.setitem(sys.modules, name, module)
        self.new_runtime()

    def _mount(self, mountpoint):
        self.mounts.append(mountpoint)
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
        if not (Path(mountpoint) / "MyDrive").exists():
            (Path(mountpoint) / "MyDrive").symlink_to(self.drive, target_is_directory=True)

    def _run(self, cmd, **kw):
        if cmd[1:4] == ["-m", "pip", "install"]:
            self.pips.append(cmd)
            return subprocess.CompletedProcess(cmd, 0)
        if cmd[:2] == ["git", "clone"]:
            self.clones.append(cmd)
        return REAL_RUN(cmd, **kw)

    def new_runtime(self):
        """What Colab gives after a disconnect or a change of runtime type: /content empty, a fresh kernel."""
        shutil.rmtree(self.content)
        self.content.mkdir()
        self.mp.setattr(sys, "path", [p for p in sys.path if not p.startswith(str(self.content))])

    def run_cell(self, cell: str = INSTALL_CELL):
        self.mp.delitem(sys.modules, "dbtutor", raising=False)     # a new kernel has not imported the course yet
        exec(cell, {})

    @property
    def home(self) -> Path:
        return self.content / "dbtutor"


def a_course(folder: Path) -> Path:
    """A small stand-in for the course: pyproject.toml, the real tools/colab_install.py, one module."""
    (folder / "tools").mkdir(parents=True)
    (folder / "dbtutor").mkdir()
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copy(ROOT / "tools" / "colab_install.py", folder / "tools" / "colab_install.py")
    (folder / "dbtutor" / "__init__.py").write_text('"""stand-in"""\n')
    return folder


def zip_of(course: Path, out: Path, top: str) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(course.rglob("*")):
            z.write(p, f"{top}/{p.relative_to(course)}")
    return out


@pytest.fixture
def colab(tmp_path, monkeypatch):
    return Colab(tmp_path, monkeypatch)


def snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_zip_uploaded_to_colab_whatever_its_top_folder_is_installed_once(colab, tmp_path):
    """GitHub's "Download ZIP" makes dbtutor-main/: it becomes /content/dbtutor, pip installs it with Colab's torch
    pinned, Drive is not asked for; the cell run again changes nothing and asks nothing."""
    import importlib.metadata
    zip_of(a_course(tmp_path / "src"), colab.content / "dbtutor-main.zip", "dbtutor-main")
    colab.run_cell()
    assert (colab.home / "pyproject.toml").is_file() and (colab.home / "tools" / "colab_install.py").is_file()
    assert len(colab.pips) == 1 and colab.pips[0][-3:] == ["-e", str(colab.home.resolve()),
                                                          f"torch=={importlib.metadata.version('torch')}"]
    assert colab.mounts == [] and str(colab.home.resolve()) in sys.path
    before = snapshot(colab.content)
    colab.run_cell()
    assert len(colab.pips) == 1 and colab.mounts == [] and snapshot(colab.content) == before


def test_the_course_in_drive_is_copied_without_the_work_and_the_hub_cache(colab, tmp_path):
    course = a_course(colab.drive / "dbtutor")
    (course / "work" / "runs").mkdir(parents=True)
    (course / "hub" / "models--x").mkdir(parents=True)
    colab.run_cell()
    assert colab.mounts == [str(colab.content / "drive")] and len(colab.pips) == 1
    assert (colab.home / "tools" / "colab_install.py").is_file()
    assert not (colab.home / "work").exists() and not (colab.home / "hub").exists()
    colab.run_cell()                                      # asks nothing again
    assert len(colab.mounts) == 1 and len(colab.pips) == 1


def test_a_zip_in_drive_is_found_when_nothing_is_uploaded(colab, tmp_path):
    zip_of(a_course(tmp_path / "src"), colab.drive / "dbtutor (1).zip", "whatever")
    colab.run_cell()
    assert len(colab.mounts) == 1 and (colab.home / "pyproject.toml").is_file() and len(colab.pips) == 1


def test_an_upload_goes_before_drive_and_drive_is_not_asked_for(colab, tmp_path):
    a_course(colab.drive / "dbtutor")
    zip_of(a_course(tmp_path / "src"), colab.content / "dbtutor.zip", "dbtutor")
    (tmp_path / "src" / "from_the_zip").write_text("")
    zip_of(tmp_path / "src", colab.content / "dbtutor.zip", "dbtutor")
    colab.run_cell()
    assert colab.mounts == [] and (colab.home / "from_the_zip").exists()


def test_of_several_zips_the_newest_is_taken(colab, tmp_path):
    """Drive names a second upload "dbtutor (1).zip": whichever name, the newest zip is the course."""
    course = a_course(tmp_path / "src")
    old = zip_of(course, colab.content / "dbtutor (1).zip", "dbtutor")
    (course / "newer").write_text("")
    new = zip_of(course, colab.content / "dbtutor.zip", "dbtutor")
    os.utime(old, (2e9, 2e9))
    os.utime(new, (1e9, 1e9))
    colab.run_cell()
    assert not (colab.home / "newer").exists()
    colab.new_runtime()
    zip_of(course, colab.content / "dbtutor (1).zip", "dbtutor")     # uploaded now: the newest
    colab.run_cell()
    assert (colab.home / "newer").exists()


def test_repo_is_cloned(colab, tmp_path):
    """REPO (set by tools/set_repo_url.py) is cloned, shallow: a local git repository stands in for the URL."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("set_repo_url_for_colab", ROOT / "tools" / "set_repo_url.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    repo = a_course(tmp_path / "repo")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        REAL_RUN(["git", *cmd], cwd=repo, check=True)
    cell = tool.REPO_LINE.sub(lambda m: f'{m.group(1)}"file://{repo}"', INSTALL_CELL, count=1)
    assert cell != INSTALL_CELL
    colab.run_cell(cell)
    assert len(colab.clones) == 1 and (colab.home / ".git").is_dir() and len(colab.pips) == 1
    assert colab.mounts == []


def test_without_the_course_one_line_names_the_ways_in(colab):
    with pytest.raises(SystemExit) as e:
        colab.run_cell()
    msg = str(e.value)
    assert "\n" not in msg and "dbtutor.zip" in msg and "MyDrive/dbtutor" in msg and "REPO" in msg
    assert colab.pips == [] and colab.clones == [] and len(colab.mounts) == 1     # Drive was looked at


def test_outside_colab_the_cell_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    namespace = {}
    exec(INSTALL_CELL, namespace)
    assert calls == [] and set(namespace) - {"__builtins__"} == {"sys"}


# ---------------------------------------------------------------------------------- dbtutor.course.colab, the package side

def test_work_goes_to_drive_on_colab_unless_the_learner_says_no(colab, capsys):
    from dbtutor.course import colab as dc
    assert dc.drive_home(False) is None and colab.mounts == []
    assert dc.drive_home(None) == colab.content / "drive" / "MyDrive" / "dbtutor" and len(colab.mounts) == 1
    assert dc.drive_home(True) == colab.content / "drive" / "MyDrive" / "dbtutor" and len(colab.mounts) == 1
    sys.modules.pop("google.colab")
    assert dc.drive_home(None) is None and capsys.readouterr().out == ""
    assert dc.drive_home(True) is None and "not in Colab" in capsys.readouterr().out


def test_the_course_is_kept_in_drive_once_without_what_is_not_the_course(tmp_path, capsys):
    from dbtutor.course.colab import keep_course
    course = a_course(tmp_path / "content" / "dbtutor")
    for junk in ("work/notebooks/runs", "dbtutor/__pycache__", "dbtutor.egg-info", ".git"):
        (course / junk).mkdir(parents=True)
    home = tmp_path / "MyDrive" / "dbtutor"
    (home / "work").mkdir(parents=True)
    (home / "work" / "course.json").write_text("{}")        # WORK was there first: kept
    assert keep_course(course, home) and "Keeping the course in Drive" in capsys.readouterr().out
    assert (home / "pyproject.toml").is_file() and (home / "tools" / "colab_install.py").is_file()
    assert not any((home / junk).exists() for junk in ("dbtutor/__pycache__", "dbtutor.egg-info", ".git",
                                                       "work/notebooks"))
    assert (home / "work" / "course.json").read_text() == "{}"
    (home / "notebooks").mkdir()
    (home / "notebooks" / "01.ipynb").write_text("the learner's edits")
    assert not keep_course(course, home) and (home / "notebooks" / "01.ipynb").read_text() == "the learner's edits"


def test_a_half_copied_course_is_copied_again(tmp_path):
    """pyproject.toml goes last, so a copy cut off (a disconnect) is not taken for a course."""
    from dbtutor.course.colab import keep_course
    course = a_course(tmp_path / "content" / "dbtutor")
    home = tmp_path / "MyDrive" / "dbtutor"
    (home / "tools").mkdir(parents=True)
    assert keep_course(course, home) and (home / "pyproject.toml").is_file()


def test_the_hub_cache_goes_to_drive_before_anything_is_downloaded(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from dbtutor.course.colab import keep_hub_cache
    cache, drive_hub = tmp_path / "root" / ".cache" / "huggingface" / "hub", tmp_path / "MyDrive" / "dbtutor" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert keep_hub_cache(drive_hub) and cache.is_symlink() and cache.resolve() == drive_hub.resolve()
    (cache / "models--x").mkdir()                              # a download lands in Drive
    assert (drive_hub / "models--x").is_dir()
    assert keep_hub_cache(drive_hub)                            # again: nothing to do
    cache.unlink()
    cache.mkdir()
    assert keep_hub_cache(drive_hub) and cache.is_symlink()     # an empty cache folder is replaced
    cache.unlink()
    (cache / "models--y").mkdir(parents=True)                   # this runtime downloaded already: left as it is
    assert not keep_hub_cache(drive_hub) and not cache.is_symlink()
    assert "stays there" in capsys.readouterr().out


def test_huggingface_hub_finds_what_a_runtime_before_downloaded_to_drive(tmp_path, monkeypatch):
    """A new runtime: the cache link made again, huggingface_hub finds the model the last runtime fetched into
    Drive, so it is not downloaded again."""
    from huggingface_hub import constants, try_to_load_from_cache

    from dbtutor.course.colab import keep_hub_cache
    cache, drive_hub = tmp_path / "home" / "hub", tmp_path / "MyDrive" / "dbtutor" / "hub"
    model = drive_hub / "models--someone--model"
    (model / "refs").mkdir(parents=True)
    (model / "refs" / "main").write_text("abc")
    (model / "snapshots" / "abc").mkdir(parents=True)
    (model / "snapshots" / "abc" / "model_index.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert try_to_load_from_cache("someone/model", "model_index.json") is None       # this runtime's own cache
    keep_hub_cache(drive_hub)
    found = try_to_load_from_cache("someone/model", "model_index.json")
    assert isinstance(found, str) and Path(found).resolve() == (model / "snapshots" / "abc" / "model_index.json")


def test_setup_on_colab_keeps_work_choices_course_and_hub_cache_in_drive(colab, tmp_path, monkeypatch, capsys):
    """The first notebook: Drive mounted, WORK and the choice file in MyDrive/dbtutor/work, the course copied there,
    the hub cache linked there. The same runtime again: nothing asked. A new runtime with PROFILE left None: the
    choices come back from Drive. WORK_ON_DRIVE = False: this runtime's disk, the hub cache left alone."""
    from huggingface_hub import constants

    from dbtutor import course
    for name in ("DBTUTOR_PROFILE", "DBTUTOR_NB_WORK", "DBTUTOR_PRETRAINED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBTUTOR_ALLOW_CPU", "1")
    monkeypatch.setattr(course.profiles, "ROOT", a_course(colab.home))  # the course as the install cell left it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "runtime1" / "hub"))
    in_drive = colab.drive / "dbtutor"
    c = course.setup("sd15", None, None, "puppy")
    assert c.work == colab.content / "drive" / "MyDrive" / "dbtutor" / "work" and len(colab.mounts) == 1
    assert json.loads((in_drive / "work" / "course.json").read_text())["settings"]["sd15"] == {"class_noun": "puppy"}
    assert (in_drive / "pyproject.toml").is_file() and (in_drive / "tools" / "colab_install.py").is_file()
    assert Path(constants.HF_HUB_CACHE).resolve() == (in_drive / "hub").resolve()
    assert "hub cache in Drive" in capsys.readouterr().out
    course.setup()
    assert len(colab.mounts) == 1
    colab.new_runtime()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "runtime2" / "hub"))
    later = course.setup()
    assert (later.profile, later.class_noun, later.sources["class_noun"]) == ("sd15", "puppy", "an earlier notebook")
    assert len(colab.mounts) == 2 and Path(constants.HF_HUB_CACHE).is_symlink()
    colab.new_runtime()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "runtime3" / "hub"))
    course.setup(hub_on_drive=False)                                  # kept off Drive: remembered for the course
    colab.new_runtime()
    course.setup()
    assert not Path(constants.HF_HUB_CACHE).exists() and len(colab.mounts) == 4
    course.setup("toy")                                                # the toy course downloads nothing
    assert not Path(constants.HF_HUB_CACHE).exists()
    colab.new_runtime()
    local = course.setup("sd15", False)
    assert local.work == course.profiles.ROOT / "work" / "notebooks" and len(colab.mounts) == 4
    assert not Path(constants.HF_HUB_CACHE).exists()
