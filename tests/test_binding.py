"""The identifier binds: after the default DreamBooth run "a photo of sks ball" shows the subject, "a photo of a ball"
stays any ball. The slowest test of the suite (one full default run, about two minutes). It fails on the base model
without the names stage (docs/experiments.md): the same defaults there give bind 0.32 and "a ball" with the look in
0.44."""
import pytest

from dbtutor import load_config, train
from dbtutor.measuring.evaluate import DEFAULT_JUDGE, evaluate
from conftest import SUBJECT

pytestmark = pytest.mark.slow                    # one full default run


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("binding")
    cfg = load_config(overrides={"output_dir": str(tmp / "run"), "model.data.regularization_dir": str(tmp / "reg"),
                                 "trainer.checkpoint_every": 0, "trainer.progress": False})
    return cfg, train(cfg)


def test_defaults_bind_the_subject_to_the_identifier_not_to_the_class(default_run):
    cfg, res = default_run
    assert cfg.model.with_prior_preservation and cfg.model.prior_loss_weight == 1.0    # the defaults, untouched
    r = evaluate(res.pipe, SUBJECT, num_samples=4, class_samples=32, judge_dir=DEFAULT_JUDGE)
    m = r["metrics"]
    # "sks ball" (and "sks ball on the snow", ...) shows the subject far more often than "a ball" does
    # (measured: 28 of the 28 instance + scene samples, 2 of 32 "a ball" samples; on the weights without the names
    # stage the two shares were alike, about 0.2 each)
    assert m["bind_attr"] >= 0.7, m
    assert m["bind_scene"] >= 0.8, m                 # ... in the scene the prompt asks for
    assert m["pres_attr"] <= 0.15, m
    assert m["bind_attr"] >= 4 * max(m["pres_attr"], 1 / 32), m
    # ... and "a ball" keeps its colours (base model, same seeds: 0.76)
    assert m["class_colors"] >= 0.6, m
    assert r["per_prompt"]["a photo of sks ball"]["subject_attr"] >= 0.75
