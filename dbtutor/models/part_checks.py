"""The checks of each part of a pipeline folder, file by file, before anything is loaded: model_index.json, a
weight-bearing part's config against its weights' shapes, the tokenizer's files, the scheduler's config, and how the
parts fit each other; the first problem raises Damage."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .model_source import quiet
from .weight_files import DAMAGED, MISSING, BadFile, read_json, weight_shapes, weights_file

PARTS = {   # part: its library, the classes dbtutor trains with (None: any scheduler of the library)
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "vae": ("diffusers", ("AutoencoderKL",)),
    "text_encoder": ("transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "scheduler": ("diffusers", None),
}
NOT_LOADED = ("safety_checker", "feature_extractor", "image_encoder")   # dbtutor loads none of these

MISMATCH, FOREIGN = "mismatch", "foreign"      # besides MISSING (a cut download or copy) and DAMAGED


class Damage(Exception):
    """One problem of a pipeline folder: the part, the file (relative to the folder), what is wrong, its kind
    (MISSING: a cut download or copy; DAMAGED; MISMATCH: files that do not belong together; FOREIGN: another kind
    of model) and, when the kind's usual advice does not fit, what to do."""

    def __init__(self, part: str, file: str, problem: str, kind: str, fix: str | None = None):
        super().__init__(f"{part}: {file} {problem}")
        self.part, self.file, self.problem, self.kind, self.fix = part, file, problem, kind, fix


def _bad(part: str, file: str, e: BadFile) -> Damage:
    return Damage(part, file, e.problem, e.kind, e.fix)


def _json(folder: Path, file: str, part: str) -> dict:
    try:
        return read_json(folder / file)
    except BadFile as e:
        raise _bad(part, file, e) from None


def _newer(library: str, saved) -> str | None:
    """What to do when a file was written by a newer `library` than this one (else None)."""
    from packaging.version import InvalidVersion, Version
    here = importlib.import_module(library).__version__
    try:
        newer = saved and Version(str(saved)) > Version(here)
    except InvalidVersion:
        newer = False
    return f"it was written by {library} {saved}, newer than this {here}: pip install -U '{library}>={saved}'" \
        if newer else None


def check_index(folder: Path) -> dict:
    """model_index.json: {part: (library, class)} for the five parts, after checking it describes a Stable
    Diffusion pipeline whose classes this diffusers and transformers have."""
    index = _json(folder, "model_index.json", "pipeline")
    kind = index.get("_class_name", "pipeline")
    entries = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, (list, tuple))}
    for k, v in entries.items():
        if len(v) != 2 or not all(x is None or isinstance(x, str) for x in v):
            raise Damage("pipeline", "model_index.json", f"has an entry {k!r} that is not [library, class]", DAMAGED)
    present = {k: tuple(v) for k, v in entries.items() if v[0] is not None and v[1] is not None}
    extra = sorted(k for k in present if k not in PARTS and k not in NOT_LOADED)
    absent = [k for k in PARTS if k not in present]
    if extra or absent:
        what = f"has {', '.join(extra)}" if extra else f"lists no {', '.join(absent)}"
        raise Damage("pipeline", "model_index.json", f"describes a {kind} that {what}, not a Stable Diffusion 1.x/2.x "
                     "pipeline", FOREIGN)
    parts = {}
    for part, (library, classes) in PARTS.items():
        lib, cls = present[part]
        if lib != library or (classes and cls not in classes):
            raise Damage(part, "model_index.json", f"names {lib}.{cls} for {part}, where dbtutor needs "
                         f"{library}.{' or '.join(classes or ['<a scheduler>'])}", FOREIGN)
        if not hasattr(importlib.import_module(library), cls):
            raise Damage(part, "model_index.json", f"names {library}.{cls}, which {library} "
                         f"{importlib.import_module(library).__version__} does not have", FOREIGN,
                         fix=_newer(library, index.get("_diffusers_version"))
                         or f"pip install -U {library} if a newer one has it, or name a {part} class this one has "
                         "in model_index.json")
        parts[part] = (lib, cls)
    return parts


def _meta_model(folder: Path, part: str, library: str, class_name: str):
    """The part as its config builds it, on the meta device (shapes only, no memory, about a second for SD v1.5)."""
    cls = getattr(importlib.import_module(library), class_name)
    with quiet(), torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(folder / part)))
        return cls(cls.config_class.from_pretrained(str(folder / part)))


def check_weights(folder: Path, part: str, library: str, class_name: str, variant: str | None = None) -> dict:
    """A weight-bearing part: its folder, config and weights file(s) (`variant`'s where it has them), and the shapes
    the config builds against the file's. Returns the config as built (for the checks between parts)."""
    if not (folder / part).is_dir():
        raise Damage(part, f"{part}/", f"is missing (model_index.json lists {class_name})", MISSING)
    config = _json(folder, f"{part}/config.json", part)
    try:
        file = weights_file(folder / part, library, variant)
        shapes = weight_shapes(file)
    except BadFile as e:
        raise _bad(part, e.file or f"{part}/", e) from None
    rel = file.relative_to(folder).as_posix()
    try:
        model = _meta_model(folder, part, library, class_name)
    except Exception as e:          # each library raises its own types for a config it cannot build
        saved = config.get("_diffusers_version") or config.get("transformers_version")
        raise Damage(part, f"{part}/config.json", f"is not a valid {class_name} config ({type(e).__name__}: "
                     f"{_first_line(e)})", DAMAGED, fix=_newer(library, saved)) from None
    if shapes is not None:          # .bin files: no header to read without unpickling; the loader checks them
        have = {k.removeprefix("text_model."): v for k, v in shapes.items()}
        want = {k.removeprefix("text_model."): tuple(t.shape) for k, t in model.state_dict().items()}
        odd = [k for k in want if k in have and have[k] != want[k]]
        if odd:
            k = odd[0]
            raise Damage(part, f"{part}/config.json", f"does not fit {rel}: {len(odd)} of {len(want)} tensors have "
                         f"other shapes, e.g. {k} is {list(have[k])} in the file but {list(want[k])} by the config",
                         MISMATCH)
    return dict(model.config) if library == "diffusers" else model.config.to_dict()


def check_tokenizer(folder: Path) -> dict:
    """vocab.json + merges.txt and/or tokenizer.json, each readable, and tokenizer_config.json with the prompt
    length (without it transformers pads prompts to 10^30 tokens). Returns the highest token id and that length."""
    tok = folder / "tokenizer"
    if not tok.is_dir():
        raise Damage("tokenizer", "tokenizer/", "is missing (model_index.json lists a tokenizer)", MISSING)
    slow = [(tok / n).exists() for n in ("vocab.json", "merges.txt")]
    if not (all(slow) or (tok / "tokenizer.json").exists()):
        lacking = "merges.txt" if slow[0] else "vocab.json"
        raise Damage("tokenizer", f"tokenizer/{lacking}", "is missing (the tokenizer needs vocab.json and merges.txt, "
                     "or tokenizer.json)", MISSING)
    ids = []
    if all(slow):
        vocab = _json(folder, "tokenizer/vocab.json", "tokenizer")
        ids += list(vocab.values())
        _check_merges(folder, "tokenizer/merges.txt", _read_merges(folder, "tokenizer/merges.txt"), len(vocab))
    if (tok / "tokenizer.json").exists():
        fast = _json(folder, "tokenizer/tokenizer.json", "tokenizer")
        vocab, merges = (fast.get("model") or {}).get("vocab"), (fast.get("model") or {}).get("merges")
        if not isinstance(vocab, dict) or not isinstance(merges, list):
            raise Damage("tokenizer", "tokenizer/tokenizer.json", "holds no BPE vocabulary (model.vocab and "
                         "model.merges)", DAMAGED)
        _check_merges(folder, "tokenizer/tokenizer.json", merges, len(vocab))
        ids += list(vocab.values()) + [t.get("id") for t in fast.get("added_tokens") or [] if isinstance(t, dict)]
    for name in ("special_tokens_map.json", "added_tokens.json"):
        if (tok / name).exists():
            extra = _json(folder, f"tokenizer/{name}", "tokenizer")
            ids += list(extra.values()) if name == "added_tokens.json" else []
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise Damage("tokenizer", "tokenizer/vocab.json", "has token ids that are not whole numbers >= 0", DAMAGED)
    config = _json(folder, "tokenizer/tokenizer_config.json", "tokenizer")
    length = config.get("model_max_length")
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 100_000:
        raise Damage("tokenizer", "tokenizer/tokenizer_config.json", f"gives no usable model_max_length (the prompt "
                     f"length in tokens): {length!r}", DAMAGED)
    return {"max_id": max(ids, default=-1), "model_max_length": length}


def _read_merges(folder: Path, file: str) -> list[str]:
    try:
        lines = (folder / file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise Damage("tokenizer", file, f"cannot be read ({type(e).__name__})", DAMAGED) from None
    except UnicodeDecodeError:
        raise Damage("tokenizer", file, "is not UTF-8 text", DAMAGED) from None
    bad = next((n for n, line in enumerate(lines, 1) if line and not line.startswith("#version")
                and len(line.split(" ")) != 2), None)
    if bad is not None:
        raise Damage("tokenizer", file, f"line {bad} is not a merge (two symbols separated by a space)", DAMAGED)
    return [line for line in lines if line and not line.startswith("#version")]


def _check_merges(folder: Path, file: str, merges: list, vocab_size: int) -> None:
    """CLIP's byte-level BPE has one token per merge besides its 512 byte symbols (with and without </w>) and 2
    special tokens: fewer merges than that means a cut file (a cut that ends a line leaves no other trace)."""
    if not merges:
        raise Damage("tokenizer", file, "holds no merges (empty)", MISSING)
    if len(merges) < vocab_size - 514:
        raise Damage("tokenizer", file, f"is truncated: {len(merges):,} merges for a vocabulary of {vocab_size:,} "
                     f"tokens, which has {vocab_size - 514:,}", MISSING)


def check_scheduler(folder: Path, class_name: str) -> None:
    if not (folder / "scheduler").is_dir():
        raise Damage("scheduler", "scheduler/", f"is missing (model_index.json lists {class_name})", MISSING)
    config = _json(folder, "scheduler/scheduler_config.json", "scheduler")
    cls = getattr(importlib.import_module("diffusers"), class_name)
    try:
        with quiet():
            cls.from_config(config)
    except Exception as e:
        raise Damage("scheduler", "scheduler/scheduler_config.json", f"is not a valid {class_name} config "
                     f"({type(e).__name__}: {_first_line(e)})", DAMAGED,
                     fix=_newer("diffusers", config.get("_diffusers_version"))) from None


def check_fit(found: dict) -> None:
    """The parts fit each other: the UNet's channels are the VAE's latents, it attends to the text encoder's
    width, and the tokenizer's ids and prompt length are within the text encoder's."""
    unet, vae, te, tok = (found.get(k) for k in ("unet", "vae", "text_encoder", "tokenizer"))
    if unet and vae:
        lat = vae.get("latent_channels")
        if unet.get("in_channels") != lat or unet.get("out_channels") != lat:
            raise Damage("unet", "unet/config.json", f"has {unet.get('in_channels')} input and "
                         f"{unet.get('out_channels')} output channels, but the VAE's latents have {lat} (vae/"
                         "config.json): another kind of model (an inpainting UNet has 9) or parts of two models",
                         FOREIGN if unet.get("in_channels") != unet.get("out_channels") else MISMATCH)
    if unet and te:
        cross = unet.get("cross_attention_dim")
        cross = set(cross) if isinstance(cross, (list, tuple)) else {cross}
        if cross != {te.get("hidden_size")}:
            raise Damage("unet", "unet/config.json", f"attends to text of width {', '.join(map(str, sorted(cross)))} "
                         f"(cross_attention_dim), but the text encoder's is {te.get('hidden_size')} "
                         "(text_encoder/config.json): parts of two models", MISMATCH)
    if te and tok:
        if tok["max_id"] >= te.get("vocab_size", 0):
            raise Damage("tokenizer", "tokenizer/", f"has token ids up to {tok['max_id']}, but the text encoder knows "
                         f"{te.get('vocab_size')} tokens (text_encoder/config.json): parts of two models", MISMATCH)
        if tok["model_max_length"] > te.get("max_position_embeddings", 0):
            raise Damage("tokenizer", "tokenizer/tokenizer_config.json", f"makes prompts of "
                         f"{tok['model_max_length']} tokens, but the text encoder reads at most "
                         f"{te.get('max_position_embeddings')} (max_position_embeddings)", MISMATCH)


def _first_line(e: Exception, limit: int = 200) -> str:
    """The error's message on one line, shortened."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."
