"""Every command-line argument outside the config is checked before any work: one line naming the option, exit
status 2, nothing written; argparse's own errors (a word where a number goes, an unknown option) are one line too."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from dbtutor.commands import arguments as A
from dbtutor.commands.cli import main
from dbtutor.core.errors import ConfigError


def cli(argv, capsys):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def spots(tmp_path):
    """A file where a folder would have to be, and a folder where a file would go."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    return tmp_path


CASES = [   # (command and arguments, with {t} for the test's folder; words of the one line)
    ("sample --num 0", ["--num 0", "at least 1"]),
    ("sample --num -2", ["--num -2", "at least 1"]),
    ("sample --num two", ["argument --num", "invalid int value: 'two'", "dbtutor sample --help"]),
    ("sample --seed -1", ["--seed -1", "from 0 to"]),
    ("sample --seed 1.5", ["argument --seed", "invalid int value"]),
    (f"sample --seed {2 ** 63}", [f"--seed {2 ** 63}", "from 0 to"]),
    ("sample --out {t}/grid.xyz", ["--out", ".xyz is no image format that can be written", ".png"]),
    ("sample --out {t}/a-file/grid.png", ["--out", "its folder cannot be created", "a-file is a file"]),
    ("sample --out {t}/a-file/deeper/grid.png", ["its folder cannot be created", "a-file is a file"]),
    ("sample --out {t}/a-folder", ["--out", "is a folder", "give a file name"]),
    ("sample --nmu 3", ["unrecognized arguments: --nmu"]),
    ("eval --num-samples 1", ["--num-samples 1", "at least 2"]),
    ("eval --class-samples 0", ["--class-samples 0", "at least 2"]),
    ("eval --seed -5", ["--seed -5"]),
    ("eval --out {t}/a-file/eval.json", ["--out", "cannot be created"]),
    ("eval --model {t}/nowhere", ["--model {t}/nowhere: no such folder"]),
    ("eval --backend judgee", ["argument --backend", "invalid choice: 'judgee'"]),
    ("ablate --steps 0", ["--steps 0", "at least 1"]),
    ("ablate --num-samples 1", ["--num-samples 1", "at least 2"]),
    ("ablate --class-samples -1", ["--class-samples -1"]),
    ("ablate --num-reg-images 0", ["--num-reg-images 0", "at least 1"]),
    ("ablate --seeds 0,x", ["argument --seeds", "'0,x' is not a comma-separated list of int"]),
    ("ablate --seeds ,", ["--seeds", "at least one seed"]),
    ("ablate --seeds 0,-1", ["--seeds -1", "from 0 to"]),
    ("ablate --weights -1", ["--weights -1.0", "at least 0"]),
    ("ablate --weights 0,nan", ["--weights nan", "finite"]),
    ("ablate --weights ,", ["--weights", "at least one prior_loss_weight"]),
    ("ablate --subjects ,", ["--subjects", "at least one subject"]),
    ("ablate --work {t}/a-file/ablation", ["--work", "cannot be created"]),
    ("fix-layout", ["the following arguments are required: folder"]),
    # every command that writes where the user says: a folder that is a file, a folder nothing can be written in
    ("sample --out /proc/x.png", ["--out /proc/x.png", "nothing can be written in /proc"]),
    ("sample --out /proc/new/x.png", ["--out /proc/new/x.png", "nothing can be written in /proc"]),
    ("eval --out /proc/eval.json", ["--out /proc/eval.json", "nothing can be written in /proc"]),
    ("eval output_dir=/proc/run", ["output_dir /proc/run/eval.json", "nothing can be written in /proc"]),
    ("export {t}/a-folder --out /proc/x.safetensors", ["--out /proc/x.safetensors", "nothing can be written"]),
    ("export {t}/a-folder --out {t}/a-file/x.safetensors", ["--out", "cannot be created", "a-file is a file"]),
    ("ablate --work /proc/ablation", ["--work /proc/ablation", "nothing can be written in /proc"]),
    ("ablate --work {t}/a-file", ["--work {t}/a-file is a file, not a folder"]),
    ("train output_dir=/proc/run", ["output_dir /proc/run", "nothing can be written in /proc"]),
    ("train output_dir={t}/a-file/run", ["output_dir {t}/a-file/run", "a-file is a file"]),
    ("train output_dir={t}/a-file", ["output_dir {t}/a-file is a file, not a folder"]),
    ("train output_dir={t}/run model.data.regularization_dir=/proc/reg",
     ["model.data.regularization_dir /proc/reg", "nothing can be written in /proc"]),
    ("train output_dir={t}/run model.data.cached_reg_dir={t}/a-file/reg",
     ["model.data.cached_reg_dir {t}/a-file/reg", "a-file is a file"]),
    ("generate-reg model.data.regularization_dir=/proc/reg", ["model.data.regularization_dir /proc/reg"]),
    ("generate-reg model.data.regularization_dir={t}/a-file", ["model.data.regularization_dir {t}/a-file is a file"]),
    ("cache output_dir=/proc/run", ["output_dir /proc/run/latents/instance", "nothing can be written in /proc"]),
    ("cache model.data.cached_instance_dir={t}/a-file/x", ["model.data.cached_instance_dir {t}/a-file/x"]),
    ("fix-layout /proc/sys", ["fix-layout /proc/sys", "nothing can be written in /proc/sys"]),
    ("", ["the following arguments are required: command"]),
    ("trian", ["invalid choice: 'trian'"]),
]


@pytest.mark.parametrize("args,words", CASES, ids=[c[0].replace("{t}/", "") or "nothing" for c in CASES])
def test_a_bad_argument_is_one_line_before_any_work(args, words, spots, capsys):
    if "/proc" in args and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    before = sorted(p.name for p in spots.rglob("*"))
    rc, lines = cli([a.replace("{t}", str(spots)) for a in args.split()], capsys)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("dbtutor: error: "), lines
    for w in words:
        assert w.replace("{t}", str(spots)) in lines[0], (w, lines[0])
    assert sorted(p.name for p in spots.rglob("*")) == before          # nothing written


@pytest.mark.slow
def test_through_the_real_command_line(tmp_path):
    """The same in a fresh process: no usage block, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("DBTUTOR_DEBUG", None)
    cases = [(["sample", "--num", "0", "--out", str(tmp_path / "g.png")], "--num 0"),
             (["sample", "--seed", "x", "--out", str(tmp_path / "g.png")], "argument --seed")]
    if Path("/proc/self").is_dir():              # once sampled, then a traceback from the temporary file
        cases.append((["sample", "--out", "/proc/x.png"], "nothing can be written in /proc"))
    for args, words in cases:
        r = subprocess.run([sys.executable, "-m", "dbtutor", *args],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "g.png").exists()


def test_the_checks_accept_good_values(tmp_path):
    """The reusable pieces pass what the commands legitimately take (and return it), so they can guard others."""
    assert A.count(1, "--num") == 1 and A.count(2, "--num-samples", 2) == 2
    assert A.seed(0, "--seed") == 0 and A.seed(A.MAX_SEED - 3, "--seed", 4) == A.MAX_SEED - 3
    with pytest.raises(ConfigError, match="--seed"):
        A.seed(A.MAX_SEED - 2, "--seed", 4)             # the fourth seed would overflow torch's generator
    with pytest.raises(ConfigError, match="--num"):
        A.count(True, "--num")
    assert A.seeds([0, 1, 2], "--seeds") == [0, 1, 2] and A.number("0.25", "--weights") == 0.25
    for name in ("grid.png", "grid.jpg", "grid.pdf", "grid.svg", "grid.webp", "grid"):
        assert A.figure_file(tmp_path / "new" / "deeper" / name, "--out").name == name
    for name in ("one.png", "one.jpg", "one.JPEG", "one.webp", "one.tif", "one.bmp", "one"):
        assert A.image_file(tmp_path / name, "--out").name == name
    for bad in ("one.xyz", "one.json"):
        with pytest.raises(ConfigError, match="no image format"):
            A.image_file(tmp_path / bad, "--out")
    assert not (tmp_path / "new").exists()              # checking creates nothing
    assert A.writable_file(tmp_path / "eval.json", "--out").name == "eval.json"


def test_save_image_writes_what_image_file_accepts(tmp_path):
    from PIL import Image

    from dbtutor.core.fileio import save_image
    im = Image.new("RGB", (4, 4), (200, 10, 10))
    for name, fmt in (("a.tif", "TIFF"), ("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.bmp", "BMP"), ("a", "PNG")):
        save_image(im, A.image_file(tmp_path / name, "--out"))
        assert Image.open(tmp_path / name).format == fmt
