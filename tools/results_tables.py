"""Make the docs' results tables from the result files the commands write, or check that the docs match them.

    python tools/results_tables.py --update ablation work/ablation/results.json   # take in a new result, rerender
    python tools/results_tables.py --check                                        # what tests/test_docs.py runs
    python tools/results_tables.py                                                # rerender from docs/results/

A table lives in a markdown file (the README, docs/results.md, the base model's card) between two comments:

    <!-- results: ablation-headline -->
    ... made by this script from docs/results/ablation.json: never edited by hand ...
    <!-- /results -->

Each result file in docs/results/ is a copy of what a command wrote (SOURCES says which command and where), so
two tables made from it cannot disagree, and --check fails when a table was edited by hand, when a result file
was measured on other weights than data/models holds now, or on settings the defaults no longer have. Each kind
of result's table is made by tools/results_render.py.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # this tree's dbtutor, whatever `pip install -e` points at
sys.path.insert(1, str(ROOT / "tools"))        # results_render.py, also when a test loads this file by its path
from results_render import BLOCKS, SHIPPED_JUDGE, SHIPPED_MODEL, SOURCES, not_measured   # noqa: E402

RESULTS = ROOT / "docs" / "results"
FILES = ("README.md", "docs/results.md", "docs/gpu.md", "data/models/toyworld/README.md")
BLOCK = re.compile(r"<!-- results: ([\w-]+) -->\n(.*?)<!-- /results -->", re.S)
# keys of the config that a result's settings may differ in from the defaults: paths, and what ablate sets per run
FREE_KEYS = re.compile(r"^(output_dir|model\.pretrained|model\.data\.\w+_(dir|prompt)|model\.with_prior_preservation"
                       r"|model\.prior_loss_weight|trainer\.(seed|max_steps)|model\.data\.num_reg_images)$")


def load_results(folder: Path = RESULTS) -> dict:
    return {name: json.loads((folder / f"{name}.json").read_text()) if (folder / f"{name}.json").exists() else None
            for name in SOURCES}


def render_text(text: str, results: dict, where: str = "") -> str:
    """The markdown with every results block made again from `results`; unknown block names are an error."""
    def one(match):
        block = match.group(1)
        if block not in BLOCKS:
            raise SystemExit(f"{where}: unknown results block '{block}'; known: {', '.join(BLOCKS)}")
        name, render = BLOCKS[block]
        body = render(results[name]) if results.get(name) is not None else not_measured(name)
        return f"<!-- results: {block} -->\n{body}<!-- /results -->"
    if text.count("<!-- results:") != len(BLOCK.findall(text)):
        raise SystemExit(f"{where}: a '<!-- results: NAME -->' marker has no '<!-- /results -->' after it")
    return BLOCK.sub(one, text)


# ----------------------------------------------------------------------------- is a result still current?

def stale(name: str, res: dict, root: Path = ROOT) -> list[str]:
    """Why a result file no longer describes this tree (other weights, other defaults), or []."""
    from dbtutor.commands.ablate import flat_config
    from dbtutor.core.config import load_config
    from dbtutor.models.model_source import model_fingerprint
    s = res.get("settings", {})
    why = []
    if res.get("kind") != name:
        why.append(f"it holds a '{res.get('kind')}' result, not '{name}'")
    if s.get("quick"):
        why.append("it was made with --quick (its numbers check the machinery and mean nothing)")
    model, judge = s.get("pretrained", s.get("model")), s.get("eval", {}).get("judge", s.get("judge"))
    for path, key in ((model, "model_fingerprint"), (judge, "judge_fingerprint")):
        if path in (SHIPPED_MODEL, SHIPPED_JUDGE) and key in s and s[key] != model_fingerprint(root / path):
            why.append(f"it was measured on other weights than {path} holds now")
    if name == "course_time":
        from dbtutor.course import PROFILES
        now = {k: str(v) for k, v in PROFILES["sd15"].items()}
        why += [f"it was counted with the sd15 profile's {k}={s.get(k)!r}, the profile now says {v!r}"
                for k, v in now.items() if k not in ("pretrained", "subject_dir") and s.get(k) != v]
    if "config" in s:
        now = flat_config(load_config())
        for key in sorted(set(now) | set(s["config"])):
            if not FREE_KEYS.match(key) and now.get(key) != s["config"].get(key):
                why.append(f"it was measured with {key}={s['config'].get(key)!r}, "
                           f"the defaults now say {now.get(key)!r}")
        if s.get("steps") not in (None, now["trainer.max_steps"]):
            why.append(f"it was measured with {s['steps']} steps, the defaults now say {now['trainer.max_steps']}")
        if name == "ablation" and s.get("num_reg_images") != now["model.data.num_reg_images"]:
            why.append(f"it was measured with {s['num_reg_images']} class images, the defaults now say "
                       f"{now['model.data.num_reg_images']}")
    return why


def check(root: Path = ROOT) -> list[str]:
    """Every problem with the docs' results tables, one line each (empty: all current)."""
    results = load_results(root / "docs" / "results")
    problems = []
    for name, res in results.items():
        if res is not None:
            problems += [f"docs/results/{name}.json: {w}: rerun `{SOURCES[name].command}` and "
                         f"`python tools/results_tables.py --update {name} {SOURCES[name].output}`"
                         for w in stale(name, res, root)]
    for rel in FILES:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        if render_text(text, results, rel) != text:
            problems.append(f"{rel}: a results table differs from what docs/results/ makes: run "
                            "`python tools/results_tables.py` (never edit between the markers by hand)")
    return problems


def rerender(root: Path = ROOT) -> list[str]:
    results = load_results(root / "docs" / "results")
    changed = []
    for rel in FILES:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        new = render_text(text, results, rel)
        if new != text:
            from dbtutor.core.fileio import write_text
            write_text(path, new)
            changed.append(rel)
    return changed


def update(name: str, source: Path, root: Path = ROOT) -> list[str]:
    """Copy a command's result file into docs/results/NAME.json (refusing a stale or quick one), then rerender."""
    if name not in SOURCES:
        raise SystemExit(f"unknown result '{name}'; choose from {', '.join(SOURCES)}")
    if not source.exists():
        raise SystemExit(f"{source} not found: run `{SOURCES[name].command}` first (it writes {SOURCES[name].output})")
    res = json.loads(source.read_text())
    why = stale(name, res, root)
    if why:
        raise SystemExit(f"{source} cannot go into the docs: {why[0]}")
    from dbtutor.core.fileio import atomic_path
    with atomic_path(root / "docs" / "results" / f"{name}.json") as tmp:
        shutil.copyfile(source, tmp)
    return rerender(root)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail (exit 1) if a table or result file is not current")
    ap.add_argument("--update", nargs=2, metavar=("NAME", "FILE"), help=f"one of {', '.join(SOURCES)}, and the file "
                                                                         "its command wrote")
    args = ap.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    changed = update(args.update[0], Path(args.update[1])) if args.update else rerender()
    print("rewrote " + ", ".join(changed) if changed else "every results table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
