"""Set (or clear) the course's repository URL in its one place, pyproject.toml, and make the notebooks follow it.

    python tools/set_repo_url.py https://github.com/OWNER/dbtutor     # badges + Colab install cells clone it
    python tools/set_repo_url.py --clear                              # no URL: the install cell asks for the course

The URL lives in pyproject.toml's [project.urls] Repository. Each notebook's "Open in Colab" badge and the
`REPO = "..."` line of its Colab install cell are derived from it (tests/test_notebooks_static.py checks that
they agree). Without a URL the badge opens Colab's start page (upload the notebook there) and the install cell
clones nothing: it says in one line how to bring the course in (a zip upload, a Drive folder, or REPO).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT, NOTEBOOKS = ROOT / "pyproject.toml", ROOT / "notebooks"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
URL_LINE = re.compile(r'^Repository = "(.*)"$', re.M)
BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\]\(.*$", re.M)
REPO_LINE = re.compile(r'^(    REPO = )"[^"]*"', re.M)


def read_url(pyproject: Path = PYPROJECT) -> str:
    """The repository URL in pyproject.toml, or "" when none is set."""
    m = URL_LINE.search(pyproject.read_text(encoding="utf-8"))
    return m.group(1) if m else ""


def badge(url: str, notebook: str) -> str:
    """The badge line of a notebook's title cell (py:percent form) for this URL."""
    m = GITHUB.match(url)
    if m:
        return (f"# [![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{m.group(1)}/"
                f"{m.group(2)}/blob/main/notebooks/{notebook})")
    return (f"# [![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/) (upload this notebook: File → "
            "Upload notebook; its first code cell brings in the course)")


def write_url(url: str, pyproject: Path = PYPROJECT) -> None:
    text = pyproject.read_text(encoding="utf-8")
    text = re.sub(r"\n\[project\.urls\]\nRepository = \".*\"\n", "\n", text)
    if url:
        text = text.replace("\n[project.optional-dependencies]",
                            f'\n[project.urls]\nRepository = "{url}"\n\n[project.optional-dependencies]', 1)
    pyproject.write_text(text, encoding="utf-8")


def update_notebooks(url: str, folder: Path = NOTEBOOKS) -> list[str]:
    """Rewrite each notebook's badge and REPO line in its .py source, then its .ipynb (jupytext, as --sync)."""
    import jupytext
    import nbformat
    from jupytext.combine import combine_inputs_with_outputs
    changed = []
    for py in sorted(folder.glob("[0-9][0-9]_*.py")):
        src = py.read_text(encoding="utf-8")
        new = BADGE_LINE.sub(badge(url, py.with_suffix(".ipynb").name).replace("\\", "\\\\"), src, count=1)
        new = REPO_LINE.sub(lambda m: f'{m.group(1)}"{url}"', new, count=1)
        if new != src:
            py.write_text(new, encoding="utf-8")
            nb = py.with_suffix(".ipynb")               # what `jupytext --sync` writes: the cell ids are kept
            jupytext.write(combine_inputs_with_outputs(jupytext.read(py), nbformat.read(nb, as_version=4),
                                                       fmt="py:percent"), nb)
            changed.append(py.stem)
    return changed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", help="the course's git URL, e.g. https://github.com/OWNER/dbtutor")
    ap.add_argument("--clear", action="store_true", help="remove the URL")
    args = ap.parse_args(argv)
    if bool(args.url) == args.clear:
        ap.error("give a URL or --clear")
    url = "" if args.clear else args.url.strip()
    if url and not re.match(r"^(https://|git@)\S+$", url):
        print(f"set_repo_url: {url!r} is not a git URL (https://... or git@...)", file=sys.stderr)
        return 2
    write_url(url)
    changed = update_notebooks(url)
    print(f"Repository = {url or '(none)'}; notebooks updated: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
