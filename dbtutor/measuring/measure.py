"""The notebooks' measuring stick: how often samples show the subject, by the toy world's judge or by DINOv2.

Two numbers for a pair of sample sets (subject-prompt samples, bare-class samples), whatever the back end:

    subject fidelity   judge: share of subject samples it calls the subject's look
                       DINO:  mean cosine of the subject samples' DINOv2 embeddings with the real photos'
    class drift        the same number for the bare-class samples: how far the class moved toward the subject
                       (judge: 0 for a base model, whose world never shows the look; DINO: a base model's class
                       samples already resemble the subject somewhat, e.g. dogs resemble a dog, so drift is read
                       against the base model's value)

plus the class samples' diversity (DIV, 1 - mean pairwise cosine) for DINO. `dbtutor eval` (evaluate.py) measures
more (prompt fidelity, CLIP-I, CLIP-T, per prompt); this is the part the course plots.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.config import ROOT
from ..core.errors import ConfigError

DEFAULT_JUDGE = ROOT / "data" / "models" / "toyworld-judge"


class JudgeMeasure:
    """Shares of samples the toy world's judge calls the subject's look."""
    kind, unit = "judge", "share of samples judged to show the subject"

    def __init__(self, subject_dir, judge_dir=None):
        from ..toyworld.judge import load_judge
        from ..toyworld.subjects import load_subject
        self.look = load_subject(Path(subject_dir))["look"]
        self.judge = load_judge(Path(judge_dir or os.environ.get("DBTUTOR_JUDGE") or DEFAULT_JUDGE))

    def share(self, images) -> float:
        from ..toyworld.judge import predict
        return predict(self.judge, images)["look"].count(self.look) / len(images) if len(images) else float("nan")

    def scores(self, subject_images, class_images) -> dict:
        return {"subject_fidelity": self.share(subject_images), "class_drift": self.share(class_images)}


class ClipMeasure:
    """DINOv2 similarity to the real photos (the paper's DINO score), and DIV of the class samples. Only DINOv2 is
    loaded (fetched once from the Hub, or DBTUTOR_DINO_MODEL): CLIP is never touched."""
    kind, unit = "DINOv2", "mean cosine similarity to the real photos (DINO)"

    def __init__(self, subject_dir, device="cpu"):
        from ..core.images import load_image, scan_images
        from .encoders import Encoders, model_names
        names = model_names()
        self.enc = Encoders(names["clip"], names["dino"], device=device, load=("dino",))
        self.real = self.enc.dino_images([load_image(p) for p in scan_images(subject_dir)])

    def share(self, images) -> float:
        from .evaluate import cross_similarity
        return cross_similarity(self.enc.dino_images(images), self.real) if len(images) else float("nan")

    def scores(self, subject_images, class_images) -> dict:
        from .evaluate import diversity
        out = {"subject_fidelity": self.share(subject_images), "class_drift": self.share(class_images)}
        if len(class_images) > 1:
            out["class_div"] = diversity(self.enc.dino_images(class_images))
        return out


def measurer(subject_dir, device="cpu"):
    """The judge for a toy-world subject (a folder with subject.json), else DINOv2 (from the Hub, or the folder in
    DBTUTOR_DINO_MODEL). None, with one line saying so, if it cannot load: the notebook goes on without numbers."""
    try:
        if (Path(subject_dir) / "subject.json").exists():
            return JudgeMeasure(subject_dir)
        return ClipMeasure(subject_dir, device=device)
    except (ConfigError, FileNotFoundError, OSError, ValueError) as e:
        print(f"no measurements in this notebook: {str(e).splitlines()[0]}")
        return None


def fetch(subject_dir) -> None:
    """Before a run that validates: the measuring model of real photos (DINOv2) brought onto this machine, so the
    validations (which never download) score from step 0. Nothing for a toy-world subject (the judge is shipped);
    one line if it cannot be fetched (the run goes on, its validations unscored)."""
    if (Path(subject_dir) / "subject.json").exists():
        return
    from .encoders import fetch_dino
    why = fetch_dino()
    if why:
        print(f"validations will have no scores: {why}")


def report(name: str, scores: dict) -> str:
    """One line: a model's subject fidelity and class drift (and the class samples' diversity when measured)."""
    div = f"   class DIV {scores['class_div']:.2f}" if "class_div" in scores else ""
    return f"{name:34s} subject fidelity {scores['subject_fidelity']:.2f}   class drift {scores['class_drift']:.2f}{div}"
