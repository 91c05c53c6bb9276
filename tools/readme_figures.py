"""Make the README's pictures from the code that owns them: notebook 06's comparison and the base-model grids.

    python tools/readme_figures.py --only prior        # the base model's grids (about 2 min on 2 CPU cores)
    python tools/readme_figures.py --only comparison   # notebook 06's side by side (about 5 min)
    python tools/readme_figures.py --only ablation     # `dbtutor ablate`'s figure (resumes work/ablation: ~30 min fresh)

`comparison` executes notebooks/06_with_and_without_prior.ipynb headlessly (nbclient, as nbmake does), with the
notebook's own defaults, and copies the two figures it saves (figures/with_and_without_prior.png, the side by side,
and figures/drift_over_steps.png, the class prompt over the training steps) to docs/images/. `prior` runs `python -m dbtutor.toyworld.quality` and copies its two grids; `ablation` runs (or
resumes) `dbtutor ablate --weights 0,1` (docs/results.md's table) and copies work/ablation/ablation.png. Nothing is drawn here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dbtutor.core.fileio import atomic_path      # imported first: a missing install fails now, not after the long runs

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"


def comparison(work: Path) -> Path:
    import nbformat
    from nbclient import NotebookClient
    nb_path = ROOT / "notebooks" / "06_with_and_without_prior.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    os.environ["DBTUTOR_NB_WORK"] = str(work)                 # the kernel inherits it
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}
                   ).execute()
    for name in ("with_and_without_prior.png", "drift_over_steps.png"):
        if not (work / "figures" / name).exists():
            raise SystemExit(f"{nb_path.name} ran but did not save {work / 'figures' / name}: has its cell changed?")
    _copy(work / "figures" / "drift_over_steps.png", "drift_over_steps.png", width=800)
    return _copy(work / "figures" / "with_and_without_prior.png", "with_and_without_prior.png", width=2700)


def prior(work: Path) -> list[Path]:
    subprocess.run([sys.executable, "-m", "dbtutor.toyworld.quality", "--out", str(work / "quality")], check=True,
                   cwd=ROOT)
    return [_copy(work / "quality" / name, name) for name in ("prior_color_object.png", "prior_class.png")]


def ablation() -> Path:
    subprocess.run([sys.executable, "-m", "dbtutor", "ablate", "--weights", "0,1"], check=True, cwd=ROOT)
    return _copy(ROOT / "work" / "ablation" / "ablation.png", "ablation.png")


def _copy(src: Path, name: str, width: int = 1000) -> Path:
    """Copy a figure into docs/images, at most `width` px wide and as a 256-colour PNG (the repository keeps every
    version, so a README picture should weigh ~100 KB, not 1 MB)."""
    from PIL import Image

    dst = IMAGES / name
    im = Image.open(src).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    with atomic_path(dst) as tmp:
        im.quantize(256).save(tmp, format="PNG", optimize=True)
    print(f"wrote {dst.relative_to(ROOT)}")
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("comparison", "prior", "ablation"), default=None, help="default: all three")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a fresh temporary one)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="dbtutor-figures-"))
    t0 = time.time()
    if args.only in (None, "prior"):
        prior(work)
    if args.only in (None, "comparison"):
        comparison(work)
    if args.only in (None, "ablation"):
        ablation()
    print(f"done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
