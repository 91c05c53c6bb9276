"""Safety: a NaN/inf loss stops with the last good checkpoint, Ctrl-C saves and resumes exactly, checkpoint
leftovers are ignored and cleaned, nothing unpickles data, configs cannot run code."""
import ast
import json
import os
import pickle
import signal
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dbtutor
from dbtutor import ConfigError, DBTutorError, TrainingError, load_config
from dbtutor.runs import checkpoint
from conftest import DOG6, ROOT

train_module = sys.modules["dbtutor.train"]          # (dbtutor.train is also the name of the function)

UNET = "unet/diffusion_pytorch_model.safetensors"


def same_weights(a: Path, b: Path, f=UNET) -> bool:
    x, y = load_file(str(a / f)), load_file(str(b / f))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ---- NaN / inf -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config(**{"trainer.max_steps": 4, "trainer.checkpoint_every": 2})
    real, calls = train_module.dreambooth_loss, []

    def nan_at_step_3(*a, **k):
        calls.append(1)
        loss, inst, prior = real(*a, **k)
        return (loss * float("nan"), inst, prior) if len(calls) == 3 else (loss, inst, prior)
    monkeypatch.setattr(train_module, "dreambooth_loss", nan_at_step_3)
    with pytest.raises(TrainingError) as e:
        dbtutor.train(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "loss is nan at step 2" in msg and "last good checkpoint" in msg
    out = Path(cfg.output_dir)
    assert [p.name for p in checkpoint.complete(out)] == ["step_000002"]
    assert not (out / "model_index.json").exists()                   # no output from a broken run
    monkeypatch.setattr(train_module, "dreambooth_loss", real)
    res = dbtutor.train(cfg)                                           # the rerun resumes from step 2
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]


def test_a_huge_learning_rate_stops_cleanly(tiny_config):
    cfg = tiny_config(**{"optim.lr": 1e30, "optim.warmup_steps": 0, "trainer.max_steps": 6,
                         "trainer.checkpoint_every": 1})
    with pytest.raises(TrainingError) as e:
        dbtutor.train(cfg)
    assert "\n" not in str(e.value) and "optim.lr" in str(e.value)
    for ck in checkpoint.complete(cfg.output_dir):                     # whatever was kept is finite
        for f in ck.glob("*.safetensors"):
            assert all(torch.isfinite(v).all() for v in load_file(str(f)).values())


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = load_config(overrides={"output_dir": str(tmp_path)})
    checkpoint.save(tmp_path, cfg, {"unet": net}, opt, sched, 1, [])
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="not finite after step 2"):
        checkpoint.save(tmp_path, cfg, {"unet": net}, opt, sched, 2, [])
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step_000001"]


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------

@pytest.fixture
def sigint_default():
    """Python's own Ctrl-C handler for the test, even when pytest runs as a background job (SIGINT ignored, which
    dbtutor rightly leaves alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.slow
def test_ctrl_c_saves_the_finished_step_and_the_rerun_ends_as_an_unbroken_run(tiny_config, tmp_path, cached,
                                                                               sigint_default):
    # without the cache and with random crops of wide photos, the crops of a step must come from (seed, step) too
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.open(DOG6 / f"{i:02d}.jpg").reduce(8).crop((0, 0, 96, 48)).save(photos / f"{i}.png")
    common = {"trainer.max_steps": 4, "trainer.checkpoint_every": 0, "model.use_cached_latents": cached,
              "model.data.center_crop": cached, "model.data.instance_dir": str(photos)}
    whole = dbtutor.train(tiny_config(**common, output_dir=str(tmp_path / "whole")))
    cfg = tiny_config(**common, output_dir=str(tmp_path / "parts"))

    def ctrl_c_after_step_3(rec):
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        dbtutor.train(cfg, callback=ctrl_c_after_step_3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # the handler was put back
    assert [p.name for p in checkpoint.complete(cfg.output_dir)] == ["step_000003"]
    parts = dbtutor.train(cfg)
    assert [h["loss"] for h in parts.history] == [h["loss"] for h in whole.history]
    assert same_weights(parts.output_dir, whole.output_dir)


# ---- checkpoint leftovers --------------------------------------------------------------------------------------

def test_half_written_and_half_deleted_checkpoints_are_ignored_and_cleaned(tiny_config):
    cfg = tiny_config(**{"trainer.max_steps": 2, "trainer.checkpoint_every": 0, "trainer.keep_checkpoints": True})
    out = Path(cfg.output_dir)
    ckpts = out / "checkpoints"
    for name in (".tmp-step_000009", ".del-step_000001"):            # a killed save, a killed removal
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "state.json").write_text(json.dumps({"step": 9}))
    (ckpts / "step_000007").mkdir()                                   # no state.json: incomplete
    assert checkpoint.latest(out, cfg) is None
    dbtutor.train(cfg)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002"]


# ---- no pickles, no code from configs --------------------------------------------------------------------------

def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_the_package_never_unpickles_and_never_trusts_remote_code():
    sources = sorted((ROOT / "dbtutor").rglob("*.py"))
    assert len(sources) > 15
    bad = []
    for src in sources:
        tree = ast.parse(src.read_text(), filename=str(src))
        for node, owner, name in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{src.relative_to(ROOT)}:{node.lineno}"
            true = lambda v: isinstance(v, ast.Constant) and v.value is True
            if owner == "torch" and name == "load" and not true(kw.get("weights_only")):
                bad.append(f"{where} torch.load without weights_only=True")
            if owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
                bad.append(f"{where} {owner}.{name}")
            if name == "Unpickler" or (owner == "yaml" and name in ("load", "unsafe_load", "full_load")):
                bad.append(f"{where} {owner}.{name}")
            if owner == "np" and name == "load" and true(kw.get("allow_pickle")):
                bad.append(f"{where} np.load(allow_pickle=True)")
            if true(kw.get("trust_remote_code")):
                bad.append(f"{where} trust_remote_code=True")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
                bad.append(f"{where} {name}()")
    assert bad == []


@pytest.mark.slow
def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tiny_config, tmp_path):
    cfg = tiny_config(**{"trainer.max_steps": 2, "trainer.checkpoint_every": 1, "trainer.keep_checkpoints": True})
    dbtutor.train(cfg)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))
    (checkpoint.step_dir(cfg.output_dir, 2) / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Evil()}))
    with pytest.raises(DBTutorError, match="optimizer.pt|step_000002"):
        dbtutor.train(tiny_config(**{"trainer.max_steps": 3, "trainer.checkpoint_every": 1}))
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "output_dir: !!python/object/apply:pathlib.Path.touch [[{marker}]]\n",
    "model:\n  prior_loss_weight: !!python/object/apply:os.system ['touch {marker}']\n",
    "output_dir: !!python/name:os.system\n",
    "output_dir: ${{eval:'__import__(\"pathlib\").Path(\"{marker}\").touch()'}}\n",
])
def test_configs_cannot_run_code(tmp_path, text):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yaml"
    f.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError):
        load_config(f)
    assert not marker.exists()


def test_overrides_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    for override in [f"model.prior_loss_weight=!!python/object/apply:os.system ['touch {marker}']",
                     f"output_dir=${{eval:'__import__(\"os\").system(\"touch {marker}\")'}}"]:
        try:
            cfg = load_config(overrides=[override])
        except ConfigError:
            continue
        assert isinstance(cfg.output_dir, str)                        # at most an inert string
    assert not marker.exists()
