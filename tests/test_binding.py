"""The identifier binds: after the default DreamBooth run "a photo of sks ball" shows the subject, "a photo of a ball"
stays any ball. The slowest test of the suite (one full default run, two to three minutes); it fails on the base
model without the names stage (both prompts gave the same picture)."""
import pytest

from dbtutor import load_config, train
from dbtutor.evaluate import DEFAULT_JUDGE, evaluate
from conftest import ROOT, SUBJECT


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("binding")
    cfg = load_config(overrides={"output_dir": str(tmp / "run"), "model.data.regularization_dir": str(tmp / "reg"),
                                 "trainer.checkpoint_every": 0, "trainer.progress": False})
    return cfg, train(cfg)


def test_defaults_bind_the_subject_to_the_identifier_not_to_the_class(default_run):
    cfg, res = default_run
    assert cfg.model.with_prior_preservation and cfg.model.prior_loss_weight == 1.0    # the defaults, untouched
    r = evaluate(res.pipe, SUBJECT, num_samples=4, class_samples=16, judge_dir=DEFAULT_JUDGE)
    m = r["metrics"]
    # "sks ball" (and "sks ball on the snow", ...) shows the subject far more often than "a ball" does
    # (measured: 0.57 of the 28 instance + scene samples, 1 of 16 "a ball" samples; on the weights without the names
    # stage the two shares were alike, about 0.2 each)
    assert m["bind_attr"] >= 0.4, m
    assert m["pres_attr"] <= 0.15, m
    assert m["bind_attr"] >= 4 * max(m["pres_attr"], 1 / 16), m
    # ... and "a ball" keeps several colours
    assert m["class_colors"] >= 0.5, m
    assert r["per_prompt"]["a photo of sks ball"]["subject_attr"] >= 0.5
