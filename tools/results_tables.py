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
was measured on other weights than data/models holds now, or on settings the defaults no longer have.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # this tree's dbtutor, whatever `pip install -e` points at
RESULTS = ROOT / "docs" / "results"
FILES = ("README.md", "docs/results.md", "docs/gpu.md", "data/models/toyworld/README.md")
BLOCK = re.compile(r"<!-- results: ([\w-]+) -->\n(.*?)<!-- /results -->", re.S)


@dataclass(frozen=True)
class Source:
    command: str            # the command that measures it, as a reader runs it (on an idle machine)
    output: str             # the file that command writes
    minutes: int            # about how long it takes on 2 idle CPU cores


SOURCES = {
    "ablation": Source("dbtutor ablate --weights 0,1", "work/ablation/results.json", 25),
    "quality": Source("python -m dbtutor.toyworld.quality", "work/quality/quality.json", 2),
    "lora_vs_full": Source("python bench/lora_vs_full.py", "work/lora_vs_full/results.json", 7),
    "course_time": Source("python tools/course_time.py", "work/course_time/course_time.json", 15),
}
SHIPPED_MODEL, SHIPPED_JUDGE = "data/models/toyworld", "data/models/toyworld-judge"
# keys of the config that a result's settings may differ in from the defaults: paths, and what ablate sets per run
FREE_KEYS = re.compile(r"^(output_dir|model\.pretrained|model\.data\.\w+_(dir|prompt)|model\.with_prior_preservation"
                       r"|model\.prior_loss_weight|trainer\.(seed|max_steps)|model\.data\.num_reg_images)$")


# ----------------------------------------------------------------------------- rendering

def _pm(cell) -> str:
    """[mean, std, n] -> '0.99 ± 0.02' ('0.99' for one run)."""
    mean, std, n = cell
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def _variant(name: str) -> str:
    if name == "base":
        return "base model"
    if name == "no_prior":
        return "without prior preservation"
    return "with, λ = " + name.removeprefix("prior_w")


LABELS = {"bind_attr": "bind", "bind_scene": "scene", "subject_attr": "subject", "subject_sim": "sim",
          "prompt_attr": "prompt", "pres_attr": "PRES share", "class_colors": "colours", "pres": "PRES sim",
          "div": "DIV", "div_class": "DIV class"}
HEADLINE = ("bind_attr", "bind_scene", "pres_attr", "class_colors")


def ablation_table(res: dict, keys, pooled: bool) -> str:
    from dbtutor.evaluate import METRICS
    arrow = {"higher": "↑", "lower": "↓"}
    lines = ["| subject | variant | " + " | ".join(f"{LABELS[k]} {arrow[METRICS[k][1]]}" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for subject, rows in res["table"].items():
        if subject == "all subjects" and not pooled:
            continue
        for variant, m in rows.items():
            n = max((cell[2] for cell in m.values()), default=0)
            cells = [_pm(m[k]) if k in m else "–" for k in keys]
            lines.append(f"| {subject} | {_variant(variant)} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def ablation_settings(res: dict) -> str:
    s = res["settings"]
    return (f"{_n(len(s['subjects']), 'subject')} × {_n(len(s['seeds']), 'training seed')}, {s['steps']} steps per "
            f"run, {s['num_reg_images']} class images, evaluated on {s['eval']['num_samples']} samples per subject "
            f"prompt and {s['eval']['class_samples']} of the class prompt; mean ± std over the training seeds")


def command(name: str, res: dict) -> str:
    """The command that made `res`, as a reader would type it: the canonical one plus the options it changed."""
    s = res["settings"]
    if name == "ablation":
        from dbtutor.ablate import DEFAULTS, shipped_subjects
        c, e = s.get("config", {}), s["eval"]
        given = [("--subjects", ",".join(s["subjects"]), s["subjects"] != shipped_subjects()),
                 ("--seeds", ",".join(map(str, s["seeds"])), s["seeds"] != DEFAULTS["seeds"]),
                 ("--weights", ",".join(f"{w:g}" for w in s["weights"]), s["weights"] != DEFAULTS["weights"]),
                 ("--steps", s["steps"], s["steps"] != c.get("trainer.max_steps", s["steps"])),
                 ("--num-reg-images", s["num_reg_images"],
                  s["num_reg_images"] != c.get("model.data.num_reg_images", s["num_reg_images"])),
                 ("--num-samples", e["num_samples"], e["num_samples"] != DEFAULTS["num_samples"]),
                 ("--class-samples", e["class_samples"], e["class_samples"] != DEFAULTS["class_samples"])]
        return " ".join(["dbtutor ablate"] + [f"{flag} {value}" for flag, value, changed in given if changed])
    given = [("--model", s.get("model"), s.get("model", SHIPPED_MODEL) != SHIPPED_MODEL)]
    if name == "quality":
        given += [("--judge", s["judge"], s["judge"] != SHIPPED_JUDGE), ("--steps", s["steps"], s["steps"] != 20),
                  ("--guidance", f"{s['guidance']:g}", s["guidance"] != 5.0)]
    else:
        given += [("--steps", s["steps"], s["steps"] != s.get("config", {}).get("trainer.max_steps", s["steps"])),
                  ("--lora-lr", f"{s['lora_lr']:g}", s["lora_lr"] != 1e-3)]
    return " ".join([SOURCES[name].command] + [f"{flag} {value}" for flag, value, changed in given if changed])


def measured(res: dict, name: str, seconds: float) -> str:
    p = res.get("provenance", {})
    m = p.get("machine", {})
    v = p.get("versions", {})
    took = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (f"Measured on {p.get('date', '?')} by `{command(name, res)}` ({took} on {m.get('cores', '?')} cores of "
            f"an {m.get('cpu', '?')}, torch {v.get('torch', '?')}, diffusers {v.get('diffusers', '?')}).")


def render_ablation_headline(res: dict) -> str:
    return (ablation_table(res, HEADLINE, pooled=False) + "\n\n*" + ablation_settings(res) + ". "
            + measured(res, "ablation", res.get("run_seconds", res["seconds"])) + "*\n")


def render_ablation(res: dict) -> str:
    from dbtutor.ablate import SHOWN
    from dbtutor.evaluate import METRICS
    keys = [k for k in SHOWN if k in LABELS]
    legend = "\n".join(f"- **{LABELS[k]}** (`{k}`, {METRICS[k][1]} is better): {METRICS[k][0]}" for k in keys)
    return (ablation_table(res, keys, pooled=True) + "\n\n" + ablation_settings(res) + ". "
            + measured(res, "ablation", res.get("run_seconds", res["seconds"])) + "\n\n" + legend + "\n")


def render_quality(res: dict) -> str:
    from dbtutor.toyworld.quality import report
    s = res["settings"]
    return (report(res) + f"\n\n*{res['n_images']} images judged ({s['steps']} DPM-Solver++ steps, guidance "
            f"{s['guidance']:g}). " + measured(res, "quality", res["seconds"]) + "*\n")


def render_lora(res: dict) -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from lora_vs_full import format_table
    s = res["settings"]
    return (format_table(res["rows"]) + f"\n\n*{s['steps']} training steps per variant, LoRA at lr {s['lora_lr']:g}. "
            + measured(res, "lora_vs_full", res["seconds"]) + "*\n")


def render_course_time(res: dict) -> str:
    """Each notebook's estimated minutes on a T4 under the sd15 profile, from counted work at two prices."""
    parts = ("sampling", "validation", "training", "cache", "loading", "runtime")
    lines = ["| notebook | " + " | ".join(parts) + " | total | at 6.9 it/s |", "|---|" + "---|" * (len(parts) + 2)]
    for r in res["notebooks"]:
        s, b = r["seconds"]["conservative"], r["seconds"]["benchmark"]
        lines.append(f"| `{r['notebook']}` | " + " | ".join(f"{s[k] / 60:.1f}" for k in parts)
                     + f" | **{s['total'] / 60:.1f}** | {b['total'] / 60:.1f} |")
    t = res["total_minutes"]
    lines.append("| the whole course |" + " |" * len(parts) + f" **{t['conservative']:.0f}** | {t['benchmark']:.0f} |")
    prices = "; ".join(f"{k} {v['seconds']:.3g} s ({v['basis']})" for k, v in res["prices"].items())
    p = res.get("provenance", {})
    return ("\n".join(lines) + f"\n\n*Minutes on a T4, **estimated** (nothing here ran on a GPU): the work each "
            f"notebook does under the sd15 profile at its defaults, each notebook in a runtime of its own, was counted "
            f"by running it (`python tools/course_time.py`, on {p.get('date', '?')}), then priced at a conservative "
            f"4 guided steps per second (every price below multiplied by 6.9 / 4) and, last column, at the "
            f"benchmark's 6.9. The samples along the way cost {res['validation_share_of_training']:.0%} of the "
            f"training time. Prices at 6.9 it/s: {prices}.*\n")


def render_course_time_summary(res: dict) -> str:
    times = ", ".join(f"{r['notebook'][:2]} {r['seconds']['conservative']['total'] / 60:.0f}" for r in res["notebooks"])
    t = res["total_minutes"]
    return (f"*On a Colab T4 under the sd15 profile, **estimated** (counted, then priced at a conservative 4 it/s, "
            f"installs and loading included: [docs/gpu.md](docs/gpu.md)), minutes per notebook: {times}; the whole "
            f"course {t['conservative']:.0f} min ({t['benchmark']:.0f} at a T4's best published speed).*\n")


BLOCKS = {"ablation-headline": ("ablation", render_ablation_headline), "ablation": ("ablation", render_ablation),
          "quality": ("quality", render_quality), "lora_vs_full": ("lora_vs_full", render_lora), "course_time": ("course_time", render_course_time),
          "course_time-summary": ("course_time", render_course_time_summary)}


def not_measured(name: str) -> str:
    src = SOURCES[name]
    return (f"*Not measured on this version yet. On an idle machine (about {src.minutes} min on 2 CPU cores): "
            f"`{src.command}`, then `python tools/results_tables.py --update {name} {src.output}`.*\n")


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
    from dbtutor.ablate import flat_config
    from dbtutor.config import load_config
    from dbtutor.model_source import model_fingerprint
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
            from dbtutor.fileio import write_text
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
    from dbtutor.fileio import atomic_path
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
