"""The `dbtutor` command: the whole chain through the CLI, and bad input as one clear line before heavy work."""
import os
import subprocess
import sys

import pytest
from diffusers import StableDiffusionPipeline

from conftest import ROOT, SUBJECT


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "dbtutor", *args], capture_output=True, text=True, env=env,
                           cwd=cwd or ROOT, timeout=600)


@pytest.fixture
def cli_config(tmp_path, tiny_pipeline_dir):
    f = tmp_path / "run.yaml"
    f.write_text(f"""output_dir: {tmp_path / 'out'}
model:
  pretrained: {tiny_pipeline_dir}
  sampling: {{num_inference_steps: 2}}
  data:
    instance_dir: {SUBJECT}
    regularization_dir: {tmp_path / 'reg'}
    num_reg_images: 5
    num_images_per_prompt: 2
    resolution: 32
trainer: {{max_steps: 3, checkpoint_every: 0, progress: false}}
""")
    return f


@pytest.mark.slow
def test_cli_chain_with_prior_preservation(cli_config, tmp_path):
    r = run("train", "--config", str(cli_config), "model.prior_loss_weight=0.5")
    assert r.returncode == 0, r.stderr
    assert "trained 3 steps" in r.stdout
    assert len(list((tmp_path / "reg").glob("*.png"))) == 5
    StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    r = run("generate-reg", "--config", str(cli_config))
    assert r.returncode == 0 and "generated 0 class images" in r.stdout
    r = run("cache", "--config", str(cli_config))
    assert r.returncode == 0 and "instance: 0 encoded, 5 reused" in r.stdout, r.stdout + r.stderr
    r = run("sample", "--config", str(cli_config), "--prompt", "a photo of sks ball", "--num", "2",
            "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0 and (tmp_path / "grid.png").stat().st_size > 0, r.stderr


@pytest.mark.parametrize("override,message", [
    ("model.data.instance_dir=/nonexistent/photos", "instance_dir /nonexistent/photos does not exist"),
    ("model.data.resolution=30", "multiple of 8"),
    ("model.pretrained=/nonexistent/model", "model.pretrained=/nonexistent/model"),
    ("model.pretrained=nobody/no-such-model", "neither a local folder nor reachable"),
    ("model.prior_loss_wieght=1", "did you mean 'model.prior_loss_weight'"),
    ("model.data.regularization_prompt=null", "regularization_prompt"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_nothing_is_generated(cli_config, tmp_path, override, message):
    r = run("train", "--config", str(cli_config), override)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("dbtutor: error:") and message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "reg").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_folder_with_no_readable_image(cli_config, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (bad / "notes.txt").write_text("hello")
    r = run("train", "--config", str(cli_config), f"model.data.instance_dir={bad}")
    assert r.returncode == 2 and "holds no usable image" in r.stderr and "Traceback" not in r.stderr
    assert "a.jpg" in r.stderr                      # the skipped file is named in a warning


def test_launch_commands_parse_in_accelerate_and_dbtutor():
    import shlex

    from accelerate.commands.launch import launch_command_parser

    from dbtutor import load_config
    from dbtutor.commands.cli import build_parser, launch_commands
    args = ["train", "model.prior_loss_weight=0.5", "model.data.instance_prompt=a photo of sks ball"]
    cmds = launch_commands(args, gpus=8, machines=2)
    assert len(cmds) == 4
    for where, cmd in cmds.items():
        argv = shlex.split(cmd)
        if argv[0] == "dbtutor":
            rest = argv[1:]
        else:
            assert argv[:2] == ["accelerate", "launch"]
            ns = launch_command_parser().parse_args(argv[2:])
            assert ns.module and ns.training_script == "dbtutor" and ns.multi_gpu
            if "machines" in where:
                assert (ns.num_machines, ns.num_processes, ns.machine_rank) == (2, 16, 0)
            rest = ns.training_script_args
        assert rest == args                                     # the overrides survive the shell quoting
        parsed = build_parser().parse_args(rest)
        assert load_config(parsed.config, parsed.overrides).model.prior_loss_weight == 0.5


def test_every_help_page_says_what_each_option_does_and_its_default():
    """`dbtutor COMMAND --help`: a description, a help text for every option naming its default (when it has one),
    and an override example made of config keys that command reads (sampling keys for sample)."""
    import argparse

    from dbtutor import load_config
    from dbtutor.commands.cli import EXAMPLES, build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS) and action.dest != "overrides":
                assert "%(default)s" in action.help or "(the default)" in action.help, (name, action.dest)
        if any(a.dest == "overrides" for a in p._actions):
            load_config(overrides=EXAMPLES[name].split())          # valid keys and values
            assert EXAMPLES[name] in " ".join(p.format_help().split()), name          # shown, whole
    assert all(k.startswith("model.sampling.") for k in (kv.split("=")[0] for kv in EXAMPLES["sample"].split()))
    sample_help = sub.choices["sample"].format_help()
    assert "(default: 4)" in sample_help and "prior_loss_weight" not in sample_help


@pytest.mark.slow
def test_the_summary_states_class_images_cache_and_training_apart(tiny_config, monkeypatch, capsys):
    """`dbtutor train`'s summary: each part's seconds where they were spent (made measurable by slowing one part
    at a time by a known amount), and a resumed run counts only the steps it trained."""
    import importlib
    import re
    import time

    from dbtutor.commands.cli import cmd_train
    T = importlib.import_module("dbtutor.train")

    def slowed(fn, seconds):
        def wrapper(*a, **k):
            time.sleep(seconds)
            return fn(*a, **k)
        return wrapper
    monkeypatch.setattr(T, "generate_regularization", slowed(T.generate_regularization, 0.6))
    monkeypatch.setattr(T, "LatentSource", slowed(T.LatentSource, 0.2))        # two sources: instance, class
    settings = {"trainer.validation.every": 0, "model.sampling.card_seeds": 0, "trainer.checkpoint_every": 0}
    res = T.train(tiny_config(**{"trainer.max_steps": 2, **settings}))
    assert res.start == 0 and len(res.history) == 2
    assert 0.6 <= res.times["class_images"] < 1.0 and 0.4 <= res.times["latent_cache"] < 0.6
    assert res.times["training"] < 0.6 and sum(res.times.values()) <= res.seconds
    cmd_train(None, tiny_config(**{"trainer.max_steps": 4, **settings}))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("trained", "time:"))]
    assert lines[0].startswith("trained 2 steps (3 to 4; the first 2 before) in ")
    assert re.fullmatch(r"time: class images 1 s, latent cache \d+ s, training \d+ s, saving \d+ s, loading and the "
                        r"rest \d+ s; \d+ s in all", lines[1]), lines[1]


def test_eval_measures_a_run_whose_card_cannot_be_rewritten(monkeypatch, capsys):
    """eval.json is written elsewhere (output_dir or --out); a run folder that refuses the card's rewrite (read-only
    media) costs a warning, not the measurement."""
    import argparse

    import dbtutor.sharing.card
    import dbtutor.commands.eval_command
    from dbtutor import load_config
    from dbtutor.commands.cli import cmd_eval

    def read_only(run):
        raise PermissionError(13, "Read-only file system")
    monkeypatch.setattr(dbtutor.commands.eval_command, "eval_command", lambda cfg, **k: None)
    monkeypatch.setattr(dbtutor.sharing.card, "refresh_card", read_only)
    args = argparse.Namespace(model="/media/run", backend="auto", num_samples=2, class_samples=2, seed=0, judge=None,
                              clip_model="c", dino_model="d", out=None)
    with pytest.warns(UserWarning, match=r"model card of /media/run was not updated \(Read-only file system\)"):
        cmd_eval(args, load_config())
    assert "updated the model card" not in capsys.readouterr().out
