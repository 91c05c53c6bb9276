"""The markdown of the docs' results tables, one render function per result kind, and the command each result
file comes from (SOURCES), which every table names under it."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # this tree's dbtutor, whatever `pip install -e` points at


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
    from dbtutor.measuring.evaluate import METRICS
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
        from dbtutor.commands.ablate import DEFAULTS, shipped_subjects
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
    from dbtutor.commands.ablate import SHOWN
    from dbtutor.measuring.evaluate import METRICS
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
