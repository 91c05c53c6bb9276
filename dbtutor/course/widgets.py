"""The course's ipywidgets panels: thin wrappers over the package functions the notebook cells also call.

Every panel calls plain functions (dbtutor.sample, dbtutor.train, dbtutor.generate_regularization, the plots; the
course helpers in dbtutor.course) that the notebooks also call directly, so a headless run exercises the same code.
Panels write into an ipywidgets.Output through its `outputs` state (never `with out:`), which works in JupyterLab,
Colab and headless.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from .profiles import identifier_report, no_progress_bars, sample_rows, train_run


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


def _guarded(out, status, button, fn):
    """Run fn() for a button; errors are shown in the panel (not lost in a log), the button is re-enabled. The
    libraries' own progress bars are off meanwhile: in a widget callback they would land in JupyterLab's log
    console, not in the panel (the panels report progress themselves)."""
    def handler(*_, reraise: bool = False):
        button.disabled = True
        t0 = time.time()
        try:
            with no_progress_bars():
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
                  scheduler: str = "dpm", draw: bool = True, batch_size: int = 25):
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
        images = sample_rows(pipe, [text.value], seeds, steps_w.value, g_w.value, scheduler, batch_size)
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
    from ..core.config import load_config
    from .plots import image_grid
    from ..core.images import load_image
    from ..regularization import count_images, generate_regularization
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
                       measure=None, draw: bool = True, scheduler: str = "dpm", batch_size: int = 25,
                       prepare=None):
    """prior_loss_weight and steps -> dbtutor.train (into run_dir) -> the same prompts and seeds redrawn
    next to `reference` ({'base': images, 'without prior': images}), with `measure`'s scores (dbtutor.measuring.measure).

    prompts = [subject prompt, bare class prompt]; `overrides` is the with-prior run's config; `prepare(pipe)`
    readies the trained pipeline for sampling (e.g. Course.ready: the sampling device and dtype)."""
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
        pipe = prepare(res.pipe) if prepare else res.pipe
        images = sample_rows(pipe, prompts, seeds, sampler_steps, guidance, scheduler, batch_size)
        del pipe
        del res
        name = f"with prior, λ={lam:g}, {n} steps"
        show_figure(out, comparison_grid({**reference, name: images}, prompts, len(seeds)))
        if measure is not None:
            k = len(seeds)
            s = measure.scores(images[:k], images[k:2 * k])
            _html(out, f"{measure.kind}: subject fidelity {s['subject_fidelity']:.2f}, class drift "
                       f"{s['class_drift']:.2f} ({measure.unit}, {k} per prompt)")
        status.value = name

    handler = _guarded(out, status, button, run)
    button.on_click(handler)
    box = w.VBox([w.HBox([weight_w, steps_w, button]), w.HBox([bar, status]), out])
    box.redraw = handler
    if draw:
        handler(reraise=True)
    return box


__all__ = ["show_figure", "sampler_panel", "identifier_panel", "reg_images_panel", "prior_weight_panel"]


# ----------------------------------------------------------------------------- validations along a run

def validation_panel(output_dir, step: int | None = None):
    """A slider over the validation steps of a run -> dbtutor.course.plots.validation_step (that step's samples, one row
    per prompt, with scores). 'reload' reads the folder again (a run still training adds validations)."""
    import ipywidgets as w
    from .plots import validation_step
    from ..runs.validation import load_validations
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
