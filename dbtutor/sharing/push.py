"""Share a run on the Hugging Face Hub (`dbtutor push RUN --repo-id NAME`): the run's files and its model card.

huggingface_hub (installed with diffusers) is imported only here, and only for a real upload: `--dry-run` lists
what would be uploaded, with sizes, without a token or the network. Left out: the hidden parts of a run (an
interrupted save, locks), the latent cache and training checkpoints, and eval.json/eval.png unless they measured
this very run. The model card is rewritten for the Hub: its code loads the repo id instead of the local folder, and
dreambooth.yaml names no folder of this machine (see shared_config).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import ConfigError, DataError

LEFT_OUT = ("checkpoints", "latents")


def upload_list(run, repo_id: str) -> list[tuple[str, Path | bytes]]:
    """[(name in the repo, local file or the bytes to upload)], sorted by name; the model card as bytes."""
    import json

    from omegaconf import OmegaConf

    from .card import CARD, EVAL, _evaluation, card_text, SAMPLES
    from .export import run_kind
    run = Path(run)
    run_kind(run)                                     # a finished run, or one line saying what to give
    measured = _evaluation(run) is not None
    files = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in LEFT_OUT or rel.suffix == ".lock":
            continue
        if rel.parts[0] in (EVAL, "eval.png") and not measured:
            continue
        files.append((rel.as_posix(), path))
    if (run / "dreambooth.yaml").exists() and (run / "history.json").exists():
        cfg = OmegaConf.load(run / "dreambooth.yaml")
        card = card_text(run, cfg, json.loads((run / "history.json").read_text()), _evaluation(run), name=repo_id,
                         samples=(run / SAMPLES).exists(), hub=True)
        files = [f for f in files if f[0] not in (CARD, "dreambooth.yaml")] + [
            (CARD, card.encode("utf-8")), ("dreambooth.yaml", shared_config(cfg, run).encode("utf-8"))]
    return sorted(files, key=lambda f: f[0])


def shared_config(cfg, run: Path) -> str:
    """The run's config as the Hub gets it: a path in the run relative to it ('.'), a path in the project as the
    project's configs write it (${root:}/data/...), any other absolute path by its last name only."""
    from omegaconf import OmegaConf

    from ..core.config import ROOT
    run, root = Path(run).resolve(), ROOT.resolve()

    def shared(value):
        if isinstance(value, dict):
            return {k: shared(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shared(v) for v in value]
        if not isinstance(value, str) or not Path(value).expanduser().is_absolute():
            return value
        path = Path(value).expanduser().resolve()
        if path.is_relative_to(run):
            return path.relative_to(run).as_posix()              # '.' for the run itself
        if path.is_relative_to(root):
            return "${root:}/" + path.relative_to(root).as_posix()
        return path.name
    text = OmegaConf.to_yaml(OmegaConf.create(shared(OmegaConf.to_container(cfg, resolve=False))))
    return ("# dbtutor's config of this run. Paths: in the run relative to its folder, in a dbtutor checkout as\n"
            "# ${root:}/..., anything else by its folder's name only (it was on the author's machine).\n" + text)


def _size(src) -> int:
    return len(src) if isinstance(src, bytes) else src.stat().st_size


def push(run, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None) -> dict:
    """Upload `run` to the Hub model repo `repo_id` (created if missing) in one commit; with `dry_run` only list.
    Returns {'repo_id', 'files': [(name, bytes)], 'url' (None for a dry run)}."""
    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id or "") or ".." in repo_id:
        raise ConfigError(f"--repo-id {repo_id!r} is not a Hub repo id: give NAME or USER/NAME (letters, digits, "
                          "- _ .)")
    files = upload_list(run, repo_id)
    listing = [(name, _size(src)) for name, src in files]
    if dry_run:
        return {"repo_id": repo_id, "files": listing, "url": None}
    try:
        import huggingface_hub as hf
    except ImportError:
        raise ConfigError("dbtutor push needs huggingface_hub: pip install huggingface_hub") from None
    token = token or _token(hf)
    if not token:
        raise ConfigError("no Hugging Face token: run `huggingface-cli login` (or set HF_TOKEN) with a token that "
                          "may write, then push again")
    try:
        api = hf.HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = getattr(repo, "repo_id", None) or repo_id
        ops = [hf.CommitOperationAdd(path_in_repo=name, path_or_fileobj=src) for name, src in files]
        api.create_commit(repo_id, ops, commit_message=f"dbtutor push of {Path(run).name}", repo_type="model")
    except Exception as e:                            # network, offline mode, rights: one line, nothing changed here
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(f"pushing {run} to {repo_id} failed ({type(e).__name__}: {msg}): check the network and that "
                        "the token may write to that repo") from None
    return {"repo_id": repo_id, "files": listing, "url": f"https://huggingface.co/{repo_id}"}


def _token(hf) -> str | None:
    if hasattr(hf, "get_token"):
        return hf.get_token()
    return hf.HfFolder.get_token()                    # older huggingface_hub
