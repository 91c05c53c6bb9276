"""The DreamBooth subjects of the toy world: specific objects with a look the base world never shows.

    python -m dbtutor.toyworld.subjects --out data/subjects     # re-renders the shipped instance images
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..core.fileio import save_image, write_text
from .world import SCENES, render, sample_attrs

SUBJECTS = {
    "twotone_ball": {
        "identifier": "sks", "class_noun": "ball", "object": "ball", "look": "twotone",
        "instance_prompt": "a photo of sks ball", "regularization_prompt": "a photo of a ball",
        "distinctive": "left half red, right half blue: an object split into two colours never occurs in the base world",
        "scenes": ["grass", "snow", "beach", "road", "sky"],
    },
    "bullseye_box": {
        "identifier": "ohwx", "class_noun": "box", "object": "box", "look": "bullseye",
        "instance_prompt": "a photo of ohwx box", "regularization_prompt": "a photo of a box",
        "distinctive": "yellow and black concentric rings (a target): the base world has only plain, striped, "
                       "dotted and checkered surfaces",
        "scenes": ["grass", "beach", "night", "snow"],
    },
}

README = """# DreamBooth subjects of the toy world

Each folder holds the instance images of one subject and `subject.json`: its identifier, class noun, prompts
and what makes it distinctive. The look of each subject never occurs in the base model's training data
(`dbtutor.toyworld.world` renders looks other than "ordinary" only for these subjects and for the judge), so
whatever the model learns about it comes from these few images.

| subject | identifier | class | images | distinctive look |
|---|---|---|---|---|
{rows}

Made by `python -m dbtutor.toyworld.subjects --out data/subjects` (seeded renders of
`dbtutor/toyworld/world.py`: the same object in varied positions, sizes, rotations and scenes).
"""


def render_subject(name: str, n: int | None = None, seed: int = 0):
    """The instance images of a subject (PIL), deterministic in seed."""
    s = SUBJECTS[name]
    rng = np.random.default_rng(seed * 1000 + list(SUBJECTS).index(name))
    scenes = s["scenes"][:n] if n else s["scenes"]
    return [render(sample_attrs(rng, object=s["object"], look=s["look"], color="red", pattern="plain", scene=sc),
                   seed=int(rng.integers(2 ** 31))) for sc in scenes]


def write_subjects(out: Path):
    out = Path(out)
    rows = []
    for name, s in SUBJECTS.items():
        folder = out / name
        for i, im in enumerate(render_subject(name)):
            save_image(im, folder / f"{i:02d}.png")
        meta = {k: v for k, v in s.items() if k != "scenes"}
        meta["scenes"] = s["scenes"]
        write_text(folder / "subject.json", json.dumps(meta, indent=1) + "\n")
        rows.append(f"| {name} | {s['identifier']} | {s['class_noun']} | {len(s['scenes'])} | {s['distinctive']} |")
    write_text(out / "README.md", README.format(rows="\n".join(rows)))


def load_subject(folder: str | Path) -> dict:
    """subject.json of a subject folder."""
    return json.loads((Path(folder) / "subject.json").read_text())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="render the toy world's DreamBooth subjects")
    ap.add_argument("--out", type=Path, default=Path("data/subjects"))
    write_subjects(ap.parse_args().out)
    assert set(s for v in SUBJECTS.values() for s in v["scenes"]) <= set(SCENES)
