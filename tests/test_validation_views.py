"""What the notebooks call on a run's validations: load_validations, the strips and curves, the step slider."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dbtutor  # noqa: E402
from dbtutor.course.plots import validation_curves, validation_step, validation_strips  # noqa: E402
from dbtutor.runs.validation import load_validations  # noqa: E402

from conftest import SUBJECT  # noqa: E402


@pytest.fixture(scope="module")
def runs(tiny_pipeline_dir, tmp_path_factory):
    """Two runs of 4 steps, validated at steps 0, 2, 4 with 2 seeds: without and with prior preservation."""
    work = tmp_path_factory.mktemp("views")
    out = {}
    for name, prior in (("without prior", False), ("with prior", True)):
        cfg = dbtutor.load_config(overrides={
            "model.pretrained": str(tiny_pipeline_dir), "output_dir": str(work / name.replace(" ", "_")),
            "model.data.instance_dir": str(SUBJECT), "model.data.regularization_dir": str(work / "reg"),
            "model.data.num_reg_images": 4, "model.data.num_images_per_prompt": 4, "model.data.resolution": 32,
            "model.sampling.num_inference_steps": 2, "model.with_prior_preservation": prior,
            "trainer.max_steps": 4, "trainer.checkpoint_every": 0, "trainer.progress": False,
            "trainer.validation.every": 2, "trainer.validation.num_images": 2})
        dbtutor.train(cfg)
        out[name] = cfg.output_dir
    return out


@pytest.mark.slow
def test_load_validations_gives_each_steps_images_by_prompt_and_seed(runs):
    v = load_validations(runs["with prior"])
    assert v.steps == [0, 2, 4] and v.class_prompt == "a photo of a ball" and v.instance_prompt == "a photo of sks ball"
    picture = np.asarray(__import__("PIL.Image").Image.open(v.output_dir / "validation" / "step_000002.png"))
    k = v.prompts.index("a photo of a ball")
    assert np.array_equal(np.asarray(v.at(2)["images"]["a photo of a ball"][1]), picture[32 * k:32 * (k + 1), 32:64])
    assert len(v.shares("a photo of sks ball")) == 3
    with pytest.raises(KeyError, match="no validation at step 3"):
        v.at(3)


def test_the_class_prompt_strips_of_two_runs_and_their_curves(runs):
    fig = validation_strips(runs)                                   # the class prompt by default
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["without prior", "with prior"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0", "2", "4"]
    assert axes[0].images[0].get_array().shape[:2] == (2 * 34, 3 * 34)     # 2 seeds down, 3 steps across, padded
    assert "'a photo of a ball'" in fig._suptitle.get_text()
    fig = validation_curves(runs)
    labels = [l.get_label() for l in fig.axes[0].get_lines()]
    assert labels == ["without prior: a photo of sks ball", "without prior: a photo of a ball",
                      "with prior: a photo of sks ball", "with prior: a photo of a ball"]
    line = fig.axes[0].get_lines()[3]
    assert list(line.get_xdata()) == [0, 2, 4]
    assert list(line.get_ydata()) == load_validations(runs["with prior"]).shares("a photo of a ball")


def test_the_step_slider_shows_that_steps_samples(runs):
    from dbtutor.course.widgets import validation_panel
    fig = validation_step(runs["with prior"], 2)
    assert len(fig.axes) == 3 * 2 and "step 2" in fig._suptitle.get_text()
    assert fig.axes[0].get_ylabel().startswith("a photo of sks ball\nlook_share ")
    panel = validation_panel(runs["with prior"])
    out = panel.children[1]
    assert panel.slider.options == (0, 2, 4) and panel.slider.value == 4 and len(out.outputs) == 1
    first = out.outputs[0]["data"]["image/png"]
    panel.slider.value = 0
    assert len(out.outputs) == 1 and out.outputs[0]["data"]["image/png"] != first
