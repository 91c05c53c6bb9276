"""Matplotlib figures of the course: labelled image grids, loss curves, with/without prior preservation."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..core.figures import DPI, image_grid, save_figure, save_grid  # noqa: F401  (the grids and saving: dbtutor.core.figures)


def loss_curves(histories: dict, smooth: int = 20):
    """Instance and prior loss per step for one or more runs: {'with prior': history, ...}."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for name, hist in histories.items():
        steps = [h["step"] for h in hist]
        for ax, key in zip(axes, ("instance_loss", "prior_loss")):
            v = np.array([h[key] for h in hist], dtype=float)
            if smooth > 1 and len(v) >= smooth:
                v = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
                ax.plot(steps[smooth - 1:], v, label=name)
            else:
                ax.plot(steps, v, label=name)
    for ax, key in zip(axes, ("instance loss", "prior loss")):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"MSE (moving mean of {smooth})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def comparison_grid(samples: dict, prompts: list[str], per_prompt: int, title=None):
    """Blocks side by side, one per model ({'base': images, 'without prior': ..., 'with prior': ...}); each block
    has one row per prompt with the same seeds, so differences come from the training alone."""
    names = list(samples)
    fig, axes = plt.subplots(len(prompts), len(names), figsize=(len(names) * per_prompt * 0.9 + 2.4,
                                                                 len(prompts) * 1.0 + 0.8), squeeze=False)
    for c, name in enumerate(names):
        imgs = samples[name]
        for r, p in enumerate(prompts):
            row = [np.asarray(im) for im in imgs[r * per_prompt:(r + 1) * per_prompt]]
            strip = np.concatenate([np.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=255) for x in row], axis=1)
            ax = axes[r, c]
            ax.imshow(strip)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(p, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def attribute_bars(predictions: dict, keys=("color", "pattern", "scene", "look"), title=None):
    """Counts of each attribute value the judge names ({'color': [names], ...}): the prior, in numbers."""
    from collections import Counter
    keys = [k for k in keys if k in predictions]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        counts = Counter(predictions[key])
        names = sorted(counts, key=lambda n: -counts[n])
        ax.bar(range(len(names)), [counts[n] for n in names], color="#4a7ab8")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_title(key, fontsize=9)
    axes[0, 0].set_ylabel("images")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def latent_figure(image, latent, reconstruction, scale: float = 1.6):
    """An image, its latent channels (each min-max scaled, grey) and the VAE's reconstruction, in one row."""
    lat = np.asarray(latent.detach().float().cpu()) if hasattr(latent, "detach") else np.asarray(latent)
    n = lat.shape[0]
    fig, axes = plt.subplots(1, n + 2, figsize=((n + 2) * scale, scale + 0.5))
    panels = [(np.asarray(image), "image")] + [(lat[c], f"latent ch {c}") for c in range(n)] + \
             [(np.asarray(reconstruction), "decoded")]
    for ax, (x, label) in zip(axes, panels):
        ax.imshow(x, cmap="gray" if x.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"{label}\n{x.shape[1]}x{x.shape[0]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def bar_chart(values: dict, ylabel: str = "", title=None, fmt: str = "{:.2f}"):
    """One labelled bar per entry of {name: value}."""
    fig, ax = plt.subplots(figsize=(1.4 * len(values) + 1.5, 2.8))
    bars = ax.bar(list(values), list(values.values()), color="#4a7ab8")
    for b, v in zip(bars, values.values()):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def sweep_plot(weights, scores: list[dict], title=None, unit: str = "share of samples"):
    """Subject fidelity and class drift (each a measure.scores dict) against prior_loss_weight."""
    order = np.argsort(weights)
    w = np.asarray(weights, dtype=float)[order]
    fid = np.array([scores[i]["subject_fidelity"] for i in order])
    drift = np.array([scores[i]["class_drift"] for i in order])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(w, fid, "o-", label="subject fidelity (subject prompts)")
    ax.plot(w, drift, "s-", label="class drift (the bare class prompt)")
    ax.set_xlabel("prior_loss_weight (λ)")
    ax.set_ylabel(unit, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "the prior-preservation trade-off", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- validations along a run

def _validations(run):
    """A ValidationRun, or the output_dir of a run to load it from."""
    from ..runs.validation import ValidationRun, load_validations
    return run if isinstance(run, ValidationRun) else load_validations(run)


def _runs(runs) -> dict:
    return {name: _validations(r) for name, r in runs.items()} if isinstance(runs, dict) else \
        {Path(str(getattr(runs, "output_dir", runs))).name: _validations(runs)}


def validation_strips(runs, prompt: str | None = None, title=None, scale: float = 0.9):
    """One prompt's samples over the validation steps, one block per run, stacked: each block one row per seed,
    one column per step. `runs`: {name: output_dir or ValidationRun} (e.g. without and with prior preservation),
    or one run. `prompt`: by default the class prompt ("a photo of a ball": does it drift toward the subject?)."""
    runs = _runs(runs)
    first = next(iter(runs.values()))
    prompt = prompt or first.class_prompt or first.prompts[-1]
    cols = max(len(r.steps) for r in runs.values())
    rows = [len(r.seeds) for r in runs.values()]
    fig, axes = plt.subplots(len(runs), 1, figsize=(cols * scale + 2.0, sum(rows) * scale + 0.6 * len(runs) + 0.4),
                             squeeze=False, gridspec_kw={"height_ratios": rows})
    for ax, (name, r) in zip(axes[:, 0], runs.items()):
        if prompt not in r.prompts:
            raise ValueError(f"{r.output_dir} has no validation samples of {prompt!r}; it has {r.prompts}")
        pad = lambda im: np.pad(np.asarray(im), ((1, 1), (1, 1), (0, 0)), constant_values=255)   # noqa: E731
        grid = np.concatenate([np.concatenate([pad(rec["images"][prompt][k]) for rec in r.records], axis=1)
                               for k in range(len(r.seeds))], axis=0)
        ax.imshow(grid)
        w = grid.shape[1] / len(r.steps)
        ax.set_xticks([(c + 0.5) * w for c in range(len(r.steps))])
        ax.set_xticklabels([str(s) for s in r.steps], fontsize=7)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        for s in ax.spines.values():
            s.set_visible(False)
    axes[-1, 0].set_xlabel("training step", fontsize=8)
    fig.suptitle(title or f"{prompt!r} at the same seeds over training", fontsize=10)
    fig.tight_layout()
    return fig


def validation_curves(runs, prompts=None, metric: str = "look_share", title=None):
    """A validation score over the steps, per run one curve per prompt: by default the instance prompt (solid)
    and the class prompt (dashed). With the judge's look_share: how often "a photo of sks ball" shows the subject
    (it arrives) and how often "a photo of a ball" does (the class drifts)."""
    runs = _runs(runs)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for c, (name, r) in enumerate(runs.items()):
        if r.scorer is None:
            raise ValueError(f"{r.output_dir}: its validations have no scores (no judge or CLIP/DINO was available)")
        for k, p in enumerate(prompts or [q for q in (r.instance_prompt, r.class_prompt) if q in r.prompts]):
            ax.plot(r.steps, r.shares(p, metric), "o-" if k == 0 else "s--", color=f"C{c}", markersize=3,
                    label=f"{name}: {p}")
    ax.set_xlabel("training step")
    ax.set_ylabel("share judged the subject's look" if metric == "look_share" else metric, fontsize=8)
    if metric == "look_share":
        ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "the subject arriving, the class drifting", fontsize=10)
    fig.tight_layout()
    return fig


def validation_step(run, step: int, title=None):
    """One validation of a run: one row per prompt (with its scores), one column per seed."""
    r = _validations(run)
    rec = r.at(step)
    labels = [p + "".join(f"\n{m} {v:.2f}" for m, v in rec["scores"].get(p, {}).items()) for p in r.prompts]
    return image_grid([im for p in r.prompts for im in rec["images"][p]], len(r.prompts), labels,
                      [f"seed {s}" for s in r.seeds], title or f"{r.output_dir.name}: step {step}")
