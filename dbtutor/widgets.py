"""Notebook helpers: settings, run folders, judge scores, and thin ipywidgets panels over the package's functions.

Every panel calls plain functions (dbtutor.sample, dbtutor.train, dbtutor.generate_regularization, the plots) that
the notebooks also call directly, so a headless run exercises the same code. Panels write into an
ipywidgets.Output through its `outputs` state (never `with out:`), which works in JupyterLab, Colab and headless.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

ENV_PREFIX = "DBTUTOR_NB_"


# ----------------------------------------------------------------------------- settings and run folders

def setting(name: str, default):
    """`default`, unless the environment sets DBTUTOR_NB_<NAME>; parsed to the type of `default`
    (int, float, bool, str, Path, or a list given as comma-separated values)."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, (list, tuple)):
            kind = type(default[0]) if default else float
            return [kind(v.strip()) for v in raw.split(",") if v.strip()]
        if isinstance(default, Path):
            return Path(raw)
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None


def model_tag(pretrained) -> str:
    """A short name for a base model that changes when its weights change (a hub id is used as it is)."""
    p = Path(str(pretrained)).expanduser()
    if not p.is_dir():
        return str(pretrained).replace("/", "--")
    h = hashlib.sha256()
    for f in sorted(list(p.rglob("*.safetensors")) + list(p.rglob("*.bin")) + list(p.rglob("*.json"))):
        h.update(str(f.relative_to(p)).encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
    return f"{p.name}-{h.hexdigest()[:8]}"


def run_dir(work, cfg) -> Path:
    """The output folder of a training run, named after everything that defines it (config and base model
    weights): rerunning with the same settings finds the finished run and resumes it (nothing left to do),
    other settings get a fresh folder."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("output_dir", None)
    for k in ("progress", "resume", "keep_checkpoints", "wait_for_lock"):     # they do not change what is trained
        c["trainer"].pop(k, None)
    c["model"]["pretrained"] = model_tag(cfg.model.pretrained)
    key = hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:10]
    m = cfg.model
    label = f"prior{m.prior_loss_weight:g}" if m.with_prior_preservation else "noprior"
    return Path(work) / "runs" / f"{label}-{cfg.trainer.max_steps}steps-{key}"


def run_config(overrides: dict, work):
    """load_config(overrides) with output_dir set to run_dir(work, ...)."""
    from .config import load_config
    cfg = load_config(overrides={**overrides, "output_dir": str(Path(work) / "runs" / "_")})
    cfg.output_dir = str(run_dir(work, cfg))
    return cfg


def train_run(overrides: dict, work, progress: bool = True, callback=None):
    """dbtutor.train into run_dir(work, ...): trains once, and reuses the finished run when called again."""
    from .train import train
    return train(run_config(overrides, work), progress=progress, callback=callback)


# ----------------------------------------------------------------------------- plain functions the panels wrap

def sample_rows(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0,
                scheduler: str = "dpm") -> list:
    """For each prompt, one image per seed (the same seeds for every prompt), prompt after prompt."""
    from .pipeline import sample
    return sample(pipe, [p for p in prompts for _ in seeds], [int(s) for s in seeds] * len(prompts), steps, guidance,
                  scheduler)


def token_split(tokenizer, text: str) -> list[tuple[str, int]]:
    """How the tokenizer cuts `text`: (token, id) pairs, without the start and end tokens."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return list(zip(tokenizer.convert_ids_to_tokens(ids), ids))


def identifier_report(tokenizer, identifier: str, class_noun: str) -> dict:
    """The prompts built from an identifier and a class noun, and how each is tokenized."""
    identifier, class_noun = identifier.strip(), class_noun.strip()
    article = "an" if class_noun[:1].lower() in "aeiou" and class_noun else "a"
    instance_prompt = f"a photo of {identifier} {class_noun}"
    return {"identifier": identifier, "class_noun": class_noun,
            "identifier_tokens": token_split(tokenizer, identifier),
            "instance_prompt": instance_prompt, "instance_tokens": token_split(tokenizer, instance_prompt),
            "class_prompt": f"a photo of {article} {class_noun}"}


def judge_scores(judge, subject_images, class_images, look: str) -> dict:
    """Subject fidelity = share of subject-prompt samples the world's judge sees with the subject's look;
    class drift = the same share among bare-class samples (0 = the class kept its own looks).

    The one place the notebooks measure drift: swap it for dbtutor.evaluate when that lands."""
    from .toyworld.judge import predict
    s = predict(judge, subject_images)["look"] if len(subject_images) else []
    c = predict(judge, class_images)["look"] if len(class_images) else []
    share = lambda xs: sum(x == look for x in xs) / len(xs) if xs else float("nan")
    return {"subject_fidelity": share(s), "class_drift": share(c)}


# ----------------------------------------------------------------------------- panels

def _widgets():
    import ipywidgets
    return ipywidgets


def show_figure(out, fig, clear: bool = True):
    """Put a matplotlib figure into an ipywidgets.Output (as a PNG) and close it."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image
    buf = io.BytesIO()                   # a PNG made here, whatever matplotlib backend the notebook uses
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    if clear:
        out.outputs = ()
    out.append_display_data(Image(data=buf.getvalue(), format="png"))


def _html(out, html: str, clear: bool = False):
    from IPython.display import HTML
    if clear:
        out.outputs = ()
    out.append_display_data(HTML(html))


class _quiet_libraries:
    """Switch off diffusers' and transformers' own progress bars: in a widget callback they would land in
    JupyterLab's log console, not in the panel (the panels report progress themselves)."""

    def __enter__(self):
        from diffusers.utils import logging as dl
        from transformers.utils import logging as tl
        self.mods = [m for m in (dl, tl) if m.is_progress_bar_enabled()]
        for m in self.mods:
            m.disable_progress_bar()

    def __exit__(self, *exc):
        for m in self.mods:
            m.enable_progress_bar()


def _guarded(out, status, button, fn):
    """Run fn() for a button; errors are shown in the panel (not lost in a log), the button is re-enabled."""
    def handler(*_, reraise: bool = False):
        button.disabled = True
        t0 = time.time()
        try:
            with _quiet_libraries():
                fn()
            status.value = f"{status.value} (done in {time.time() - t0:.0f} s)"
        except Exception as e:          # noqa: BLE001 - shown to the learner, not swallowed
            status.value = f"error: {type(e).__name__}: {e}"
            out.append_stderr(traceback.format_exc())
            if reraise:                 # the first draw, run by the notebook cell itself: fail the cell
                raise
        finally:
            button.disabled = False
    return handler


def sampler_panel(pipe, prompt: str, seed: int = 0, num: int = 4, guidance: float = 5.0, steps: int = 20,
                  scheduler: str = "dpm", draw: bool = True):
    """Prompt, seed, guidance scale and steps -> dbtutor.sample -> an image grid."""
    from .plots import image_grid
    w = _widgets()
    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
    seed_w = w.IntText(value=seed, description="first seed")
    num_w = w.IntSlider(value=num, min=1, max=16, description="images")
    g_w = w.FloatSlider(value=guidance, min=1.0, max=15.0, step=0.5, description="guidance")
    steps_w = w.IntSlider(value=steps, min=2, max=100, description="steps")
    button = w.Button(description="sample", button_style="primary")
    status, out = w.Label(), w.Output()

    def run():
        seeds = list(range(seed_w.value, seed_w.value + num_w.value))
        status.value = f"sampling {len(seeds)} images..."
        images = sample_rows(pipe, [text.value], seeds, steps_w.value, g_w.value, scheduler)
        show_figure(out, image_grid(images, 1, col_labels=[f"seed {s}" for s in seeds],
                                    title=f"{text.value!r}, guidance {g_w.value:g}, {steps_w.value} steps"))
        status.value = f"{len(seeds)} images"

    handler = _guarded(out, status, button, run)
    button.on_click(handler)
    box = w.VBox([text, w.HBox([seed_w, num_w]), w.HBox([g_w, steps_w]), w.HBox([button, status]), out])
    box.redraw = handler
    if draw:
        handler(reraise=True)
    return box


def identifier_panel(tokenizer, identifier: str = "sks", class_noun: str = "ball"):
    """Identifier and class noun text boxes -> the prompts and how the tokenizer splits them."""
    w = _widgets()
    ident = w.Text(value=identifier, description="identifier")
    noun = w.Text(value=class_noun, description="class noun")
    out = w.Output()

    def chips(tokens):
        return " ".join(f"<code style='background:#eef;padding:1px 4px'>{t}</code><sub>{i}</sub>" for t, i in tokens)

    def run(*_):
        r = identifier_report(tokenizer, ident.value or "?", noun.value or "?")
        n = len(r["identifier_tokens"])
        verdict = ("one token: good, the model can bind the subject to it" if n == 1 else
                   f"{n} tokens: the subject would be spread over pieces that already mean something")
        _html(out, f"<b>identifier</b> {chips(r['identifier_tokens'])} &nbsp; {verdict}<br>"
                   f"<b>instance prompt</b> <i>{r['instance_prompt']}</i> &rarr; {chips(r['instance_tokens'])}<br>"
                   f"<b>class prompt</b> <i>{r['class_prompt']}</i> (the regularization prompt)", clear=True)

    ident.observe(run, "value")
    noun.observe(run, "value")
    run()
    box = w.VBox([w.HBox([ident, noun]), out])
    box.redraw = run
    return box


def reg_images_panel(overrides: dict, folder, pipe=None, num: int = 24, show: int = 24, draw: bool = True):
    """num_reg_images slider -> dbtutor.generate_regularization into `folder` -> a grid of its first images."""
    from .config import load_config
    from .plots import image_grid
    from .data import load_image
    from .regularization import count_images, generate_regularization
    w = _widgets()
    slider = w.IntSlider(value=num, min=4, max=200, step=4, description="num_reg_images",
                         style={"description_width": "initial"})
    button = w.Button(description="generate and show", button_style="primary")
    status, out = w.Label(), w.Output()

    def run():
        n = slider.value
        cfg = load_config(overrides={**overrides, "model.data.num_reg_images": n,
                                     "model.data.regularization_dir": str(folder)})
        before = count_images(folder)
        status.value = f"{folder} holds {before}; generating {max(0, n - before)}..."
        written = generate_regularization(cfg, pipe, progress=False)
        paths = sorted(Path(folder).glob("class_*.png"))[:min(n, show)]
        images = [load_image(p) for p in paths]
        show_figure(out, image_grid(images, rows=max(1, -(-len(images) // 12)),
                                    title=f"{cfg.model.data.regularization_prompt!r}: first {len(images)} of "
                                          f"{count_images(folder)}"))
        status.value = f"generated {len(written)}, the folder holds {count_images(folder)}"

    handler = _guarded(out, status, button, run)
    button.on_click(handler)
    box = w.VBox([w.HBox([slider, button, status]), out])
    box.redraw = handler
    if draw:
        handler(reraise=True)
    return box


def prior_weight_panel(overrides: dict, work, prompts: list[str], seeds: list[int], reference: dict,
                       weight: float = 1.0, steps: int = 300, sampler_steps: int = 20, guidance: float = 5.0,
                       judge=None, look: str | None = None, draw: bool = True):
    """prior_loss_weight and steps -> dbtutor.train (into run_dir) -> the same prompts and seeds redrawn
    next to `reference` ({'base': images, 'without prior': images}), with the judge's scores.

    prompts = [subject prompt, bare class prompt]; `overrides` is the with-prior run's config."""
    from .plots import comparison_grid
    w = _widgets()
    weight_w = w.FloatSlider(value=weight, min=0.0, max=3.0, step=0.1, description="prior_loss_weight",
                             style={"description_width": "initial"})
    steps_w = w.IntSlider(value=steps, min=1, max=max(1000, steps), description="steps")
    button = w.Button(description="retrain and redraw", button_style="primary")
    status, out = w.Label(), w.Output()
    bar = w.IntProgress(value=0, min=0, max=steps, description="training")

    def run():
        lam, n = float(weight_w.value), int(steps_w.value)
        ov = {**overrides, "model.with_prior_preservation": True, "model.prior_loss_weight": lam,
              "trainer.max_steps": n}
        bar.max, bar.value = n, 0

        def tick(rec):
            bar.value = rec["step"]
            if rec["step"] % 10 == 0:
                status.value = f"step {rec['step']}/{n}: instance {rec['instance_loss']:.3f}, prior {rec['prior_loss']:.3f}"
        status.value = f"training λ={lam:g} for {n} steps..."
        res = train_run(ov, work, progress=False, callback=tick)
        bar.value = n
        status.value = "sampling..."
        images = sample_rows(res.pipe, prompts, seeds, sampler_steps, guidance)
        del res
        name = f"with prior, λ={lam:g}, {n} steps"
        show_figure(out, comparison_grid({**reference, name: images}, prompts, len(seeds)))
        if judge is not None and look:
            k = len(seeds)
            s = judge_scores(judge, images[:k], images[k:2 * k], look)
            _html(out, f"judge: subject fidelity {s['subject_fidelity']:.2f}, class drift {s['class_drift']:.2f} "
                       f"(share of samples with the subject's look, {k} per prompt)")
        status.value = name

    handler = _guarded(out, status, button, run)
    button.on_click(handler)
    box = w.VBox([w.HBox([weight_w, steps_w, button]), w.HBox([bar, status]), out])
    box.redraw = handler
    if draw:
        handler(reraise=True)
    return box


__all__ = ["setting", "model_tag", "run_dir", "run_config", "train_run", "sample_rows", "token_split",
           "identifier_report", "judge_scores", "show_figure", "sampler_panel", "identifier_panel",
           "reg_images_panel", "prior_weight_panel"]


# ----------------------------------------------------------------------------- validations along a run

def validation_panel(output_dir, step: int | None = None):
    """A slider over the validation steps of a run -> dbtutor.plots.validation_step (that step's samples, one row
    per prompt, with scores). 'reload' reads the folder again (a run still training adds validations)."""
    import ipywidgets as w
    from .plots import validation_step
    from .validation import load_validations
    run = load_validations(output_dir)
    slider = w.SelectionSlider(options=run.steps, value=run.steps[-1] if step is None else step,
                               description="step", continuous_update=False, layout=w.Layout(width="60%"))
    reload = w.Button(description="reload")
    out = w.Output()

    def draw(*_):
        show_figure(out, validation_step(run, slider.value))

    def refresh(*_):
        nonlocal run
        run = load_validations(output_dir)
        at_end = slider.value == slider.options[-1]
        slider.options = run.steps
        slider.value = run.steps[-1] if at_end else slider.value
        draw()

    slider.observe(draw, "value")
    reload.on_click(refresh)
    draw()
    box = w.VBox([w.HBox([slider, reload]), out])
    box.slider, box.redraw = slider, draw
    return box


__all__ += ["validation_panel"]
