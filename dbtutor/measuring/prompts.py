"""The evaluation prompts: the paper's 25 prompt templates, the toy world's prompts, and what a prompt names."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import ROOT
from ..core.errors import ConfigError

PAPER_PROMPTS = ROOT / "data" / "prompts_and_classes.txt"
PROPERTY_COLORS = ("purple", "green", "orange")       # "a photo of a purple sks ball"


@dataclass
class PromptSet:
    identifier: str
    class_noun: str
    subject: list[str]                # prompts naming the subject
    groups: list[str]                 # per subject prompt: instance | recontext | property
    class_prompt: str                 # the bare class prompt, for PRES
    look: str | None = None           # toy-world subjects: the look and object the judge should see
    object: str | None = None
    extra: dict = field(default_factory=dict)


def split_prompts(instance_prompt: str, class_prompt: str) -> tuple[str, str]:
    """('a photo of sks ball', 'a photo of a ball') -> ('sks', 'ball'): the word only the instance prompt has."""
    cls = class_prompt.lower().split()
    new = [w for w in instance_prompt.lower().split() if w not in cls]
    if len(new) != 1 or not cls:
        raise ConfigError(f"cannot find the identifier: instance prompt '{instance_prompt}' should be the class "
                          f"prompt '{class_prompt}' plus one rare word (for example 'a photo of sks dog')")
    return new[0], cls[-1]


def world_prompts(subject: dict, instance_prompt: str | None = None, class_prompt: str | None = None) -> PromptSet:
    """Toy-world prompts in the paper's spirit: the instance prompt, one recontextualisation per scene
    ("a photo of sks ball on the beach"), property changes ("a photo of a purple sks ball"), and the bare class."""
    from ..toyworld.world import SCENE_PHRASE, article
    instance_prompt = instance_prompt or subject["instance_prompt"]
    class_prompt = class_prompt or subject["regularization_prompt"]
    ident, noun = split_prompts(instance_prompt, class_prompt)
    prompts = [instance_prompt] + [f"{instance_prompt} {phrase}" for phrase in SCENE_PHRASE.values()]
    prompts += [f"a photo of {article(c)} {c} {ident} {noun}" for c in PROPERTY_COLORS]
    groups = ["instance"] + ["recontext"] * len(SCENE_PHRASE) + ["property"] * len(PROPERTY_COLORS)
    return PromptSet(ident, noun, prompts, groups, class_prompt, subject["look"], subject["object"])


def paper_prompts(identifier: str, class_noun: str, live: bool = True, path: Path = PAPER_PROMPTS) -> list[str]:
    """The paper's 25 evaluation prompts (data/prompts_and_classes.txt: live subjects or objects), filled in."""
    text = Path(path).read_text()
    head = "Live Subject Prompts" if live else "Object Prompts"
    if head not in text:
        raise ConfigError(f"{path} has no '{head}' section: restore it from github.com/google/dreambooth")
    block = text.split(head, 1)[1].split("]", 1)[0]
    templates = re.findall(r"'([^']*)'\.format\(unique_token, class_token\)", block)
    return [t.format(identifier, class_noun) for t in templates]


def prompt_set(subject_dir, instance_prompt: str | None = None, class_prompt: str | None = None) -> PromptSet:
    """A toy-world subject (folder with subject.json) gets world prompts; any other folder the paper's prompts."""
    meta = Path(subject_dir) / "subject.json"
    if meta.exists():
        from ..toyworld.subjects import load_subject
        return world_prompts(load_subject(subject_dir), instance_prompt, class_prompt)
    if not instance_prompt or not class_prompt:
        raise ConfigError(f"{subject_dir} has no subject.json: give the instance and class prompts")
    ident, noun = split_prompts(instance_prompt, class_prompt)
    live = noun in ("dog", "cat")                  # the paper's live subjects; others get the object prompts
    prompts = paper_prompts(ident, noun, live)
    groups = ["property" if p.endswith(f"{ident} {noun}") else "recontext" for p in prompts]
    return PromptSet(ident, noun, [instance_prompt] + prompts, ["instance"] + groups, class_prompt)


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The world attributes a prompt names, e.g. {'object': 'ball', 'color': 'purple', 'scene': 'beach'}."""
    from ..toyworld.world import COLORS, OBJECTS, PATTERNS, SCENE_PHRASE
    text = " " + " ".join(prompt.lower().replace(",", " ").split()) + " "
    out = {}
    for w in text.split():
        if w in OBJECTS:
            out["object"] = w
        elif w in COLORS:
            out["color"] = w
        elif w in PATTERNS and w != "plain":
            out["pattern"] = w
    for scene, phrase in SCENE_PHRASE.items():
        if f" {phrase} " in text:
            out["scene"] = scene
    return out


def agreement(wanted: dict[str, str], judged: dict[str, list[str]], i: int) -> float:
    """1.0 if the judge's reading of image i has every attribute the prompt names, else 0.0. The judge's colour and
    pattern heads were trained on ordinary-look objects only, so a named colour or pattern also needs that look."""
    for k, v in wanted.items():
        if judged[k][i] != v:
            return 0.0
        if k in ("color", "pattern") and judged["look"][i] != "ordinary":
            return 0.0
    return 1.0
