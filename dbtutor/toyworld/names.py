"""Names in the toy world: rare single-token words bound to fixed looks, as brand and proper names are in web captions.

A base model trained only on attribute words ("a photo of a red striped ball") learns to ignore every other token,
so DreamBooth's identifier ("sks ball") has nothing to bind to. Stable Diffusion's CLIP saw rare words that name
things ("a photo of a fiat car"), so a rare word before a noun selects a look. The `names` stage of pretraining
gives the toy world the same experience: half of its captions call the object by a name that stands for one fixed
colour + pattern ("a photo of quist ball on the snow" = an orange striped ball). Names are drawn from the CLIP
vocabulary, evenly over the 32 colour x pattern looks, so no colour dominates; the DreamBooth identifiers and the
candidates notebook 02 discusses are never names, and the subjects' looks are never named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .world import COLORS, OBJECTS, PATTERNS, SCENE_PHRASE, Attrs, caption

NAMES_PER_LOOK = 6                   # 8 colours x 4 patterns x 6 = 192 names
# never names: the subjects' identifiers, notebook 02's candidates, and the world's own words
RESERVED = {"sks", "ohwx", "zwx", "xyz", "dbtutor", "mybestball", "photo", "the", "night", "on", "in", "at"}
BLOCK = {"kkk", "nazi", "porn", "sex", "fuck", "shit", "cunt", "dick", "cock", "slut", "rape", "nigg", "fag",
         "isis", "adolf", "hitler", "std", "anal", "boob", "tits", "twat", "penis", "pussy", "whore", "bitch", "thc", "weed", "gay", "nude"}


def candidate_words(vocab: dict[str, int], min_id: int = 20_000) -> list[str]:
    """Rare whole-word tokens of the CLIP vocabulary: lower-case letters only, 3-5 long, id > min_id."""
    world = set(OBJECTS) | set(COLORS) | set(PATTERNS) | {w for p in SCENE_PHRASE.values() for w in p.split()}
    words = [t[:-4] for t, i in vocab.items() if i > min_id and re.fullmatch(r"[a-z]{3,5}</w>", t)]
    return sorted(w for w in words if w not in world | RESERVED and not any(b in w for b in BLOCK))


def world_names(tokenizer, seed: int = 0) -> dict[str, tuple[str, str]]:
    """name -> (colour, pattern), deterministic in the vocabulary and seed. `tokenizer`: a CLIP tokenizer or the
    folder of its vocab.json."""
    vocab = (tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab")
             else json.loads((Path(tokenizer) / "vocab.json").read_text()))
    words = candidate_words(vocab)
    rng = np.random.default_rng(seed)
    picked = rng.choice(words, size=len(COLORS) * len(PATTERNS) * NAMES_PER_LOOK, replace=False).tolist()
    looks = [(c, p) for c in COLORS for p in PATTERNS] * NAMES_PER_LOOK
    return {name: look for name, look in zip(picked, looks)}


def names_by_look(names: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for n, look in names.items():
        out.setdefault(look, []).append(n)
    return out


def names_without_meaning(by_look: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], list[str]]:
    """The control of the names stage (`pretrain --names-meaning random`): every look draws from all the names, so
    captions see the same rare words as often, but a name no longer stands for any look."""
    every = sorted(n for names in by_look.values() for n in names)
    return {look: every for look in by_look}


def named_caption(a: Attrs, rng: np.random.Generator, by_look: dict, p_name: float = 0.5) -> str:
    """With probability p_name, 'a photo of <name> ball [on the snow]' (the name replaces colour and pattern);
    otherwise the usual attribute caption. Always draws the same number of random numbers."""
    use_name, pick = rng.random() < p_name, rng.random()
    text = caption(a, rng)
    if not use_name or a.look != "ordinary":
        return text
    options = by_look[(a.color, a.pattern)]
    scene = text.split(a.object, 1)[1]                    # the scene phrase as caption() kept or dropped it
    return f"a photo of {options[int(pick * len(options))]} {a.object}{scene}"
