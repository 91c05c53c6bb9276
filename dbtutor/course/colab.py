"""Colab and Google Drive for the course: Colab's files, Drive mounted once, the course and hub cache kept in Drive."""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

CONTENT_ENV = "DBTUTOR_COLAB_CONTENT"     # Colab's file root, /content; tests point it at a temporary folder
IN_DRIVE = "dbtutor"                      # MyDrive/dbtutor: the course, its work folder work/, the hub cache hub/
# what is not the course in an installed copy: its work folder, the hub cache, what git, pip and Python leave
NOT_COURSE = ("work", "hub", ".git", "__pycache__", "*.egg-info", "build", ".ipynb_checkpoints")


def in_colab() -> bool:
    """True in a Colab runtime: its kernel imports google.colab when it starts."""
    return "google.colab" in sys.modules


def content() -> Path:
    """Colab's file root (/content, or DBTUTOR_COLAB_CONTENT): wiped whenever Colab gives a new runtime."""
    return Path(os.environ.get(CONTENT_ENV, "/content"))


def my_drive() -> Path:
    """Where Colab mounts the learner's Google Drive: <content>/drive/MyDrive."""
    return content() / "drive" / "MyDrive"


def enable_widgets() -> None:
    """ipywidgets 8 in Colab (its own widget manager is off until asked)."""
    from google.colab import output
    output.enable_custom_widget_manager()


def drive_home(work_on_drive) -> Path | None:
    """MyDrive/dbtutor, with Drive mounted, where WORK goes: WORK_ON_DRIVE None means yes on Colab, True yes (said
    in one line outside Colab, where there is no Drive to mount), False no. None when WORK stays on this machine.
    Colab asks for access to Drive once per runtime; an already mounted Drive is not mounted (nor asked) again."""
    if work_on_drive is False:
        return None
    if not in_colab():
        if work_on_drive:
            print("WORK_ON_DRIVE: not in Colab, so WORK stays on this machine")
        return None
    if not my_drive().is_dir():
        from google.colab import drive
        drive.mount(str(content() / "drive"))
    return my_drive() / IN_DRIVE


def _not_course(top: Path):
    """shutil.copytree's ignore: NOT_COURSE anywhere, and the top folder's pyproject.toml (copied last)."""
    patterns = shutil.ignore_patterns(*NOT_COURSE)

    def ignore(folder, names):
        skip = set(patterns(folder, names))
        return skip | ({"pyproject.toml"} if Path(folder) == top else set())
    return ignore


def keep_course(course: Path, home: Path) -> bool:
    """Copy the installed course to Drive (`home`, MyDrive/dbtutor) when Drive has none, so that the next runtimes
    install it from there and its notebooks open from Drive. Without its work folder, hub cache, .git; the
    learner's files already there are kept. pyproject.toml goes last: the install cell takes a folder that has it
    as a whole course. Returns whether it copied."""
    if (home / "pyproject.toml").is_file() or course.resolve() == home.resolve():
        return False
    print(f"Keeping the course in Drive ({home}), once: new runtimes install it from there and its notebooks "
          "open from Drive (File → Open notebook → Google Drive)")
    shutil.copytree(course, home, ignore=_not_course(course), dirs_exist_ok=True)
    shutil.copy2(course / "pyproject.toml", home / "pyproject.toml")
    return True


def keep_hub_cache(folder: Path) -> bool:
    """Make huggingface_hub's cache folder a link to `folder` (MyDrive/dbtutor/hub), before anything is
    downloaded, so that a model is fetched once and not in every runtime. A link, rather than HF_HUB_CACHE, works
    whenever huggingface_hub was imported (it reads its settings at import). Google Drive stores no symlinks:
    huggingface_hub then keeps each file once, without its links (its warning about that is silenced). A cache
    that already holds downloads in this runtime is left where it is (said in one line). Returns whether the
    cache is in `folder`."""
    from huggingface_hub import constants
    cache = Path(constants.HF_HUB_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    if cache.is_symlink() and cache.resolve() != folder.resolve():
        print(f"hub cache: {cache} already points to {cache.resolve()}, so it stays there (not in Drive)")
        return False
    if not cache.is_symlink():
        if cache.is_dir() and any(cache.iterdir()):
            print(f"hub cache: {cache} already holds downloads of this runtime, so it stays there (not in Drive)")
            return False
        if cache.is_dir():
            cache.rmdir()
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.symlink_to(folder, target_is_directory=True)
    warnings.filterwarnings("ignore", message="`huggingface_hub` cache-system uses symlinks")
    return True
