"""The course on Colab, simulated: all seven notebooks as a learner runs them there, each in a runtime of its own.

A stand-in google.colab (Drive's mount links <content>/drive/MyDrive to a folder that stays; the widget manager
does nothing) is imported when each kernel starts, as Colab's kernel does; a temporary folder stands in for
/content (DBTUTOR_COLAB_CONTENT) and is emptied for every runtime; the kernels run in a throwaway virtual
environment over this one's packages, so the install cell's pip installs the course there (never over this
checkout's own install) and each runtime installs it again. The course comes as GitHub's "Download ZIP" makes it
(dbtutor-main/, the files git tracks here), first in Drive, then uploaded to Colab, then from Drive, once from a
REPO git URL. The learner chooses the sd15 profile, their photos and class noun in 01's parameters cell only, and
MAX_STEPS in 02's; the sd15 profile runs on the small random pipeline with Stable Diffusion v1.5's block layout
(dbtutor.models.sd15, "small"), at 64 px and a few steps (DBTUTOR_NB_*), fp16 sampling on the CPU (DBTUTOR_ALLOW_CPU=1
after the first runtime, which shows the refusal), tiny random CLIP/DINOv2 encoders for the measuring cells. The
photos are the DreamBooth paper's dog cropped to 4:3, 16:9 and 9:16 as phone photos are."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import DOG6, ROOT, load_script, save_tiny_encoders

pytestmark = pytest.mark.slow
NOTEBOOKS = {p.name[:2]: p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
KERNEL = "colab-standin"
STANDIN = {
    "__init__.py": '"""A stand-in for Colab\'s google.colab: each kernel of the test imports it when it starts."""\n',
    "drive.py": '''"""Drive's mount: <mountpoint>/MyDrive becomes the test's Drive folder; each call is logged."""
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    with open(os.environ["COLAB_STANDIN_MOUNTS"], "a") as log:
        log.write(mountpoint + "\\n")
    os.makedirs(mountpoint, exist_ok=True)
    if not os.path.exists(os.path.join(mountpoint, "MyDrive")):
        os.symlink(os.environ["COLAB_STANDIN_DRIVE"], os.path.join(mountpoint, "MyDrive"))
    print("Mounted at", mountpoint)
''',
    "output.py": '"""Colab\'s output helpers: ipywidgets need nothing here."""\n\n\ndef enable_custom_widget_manager():\n'
                 '    pass\n',
}
PROBE = """import json, dbtutor
from pathlib import Path
home = Path(dbtutor.__file__).parent.parent
print("PROBE" + json.dumps({"package": dbtutor.__file__, "source": (home / "source.txt").read_text(),
      "work": str(C.work), "profile": C.profile, "subject_dir": str(C.subject_dir), "class_noun": C.class_noun,
      "guidance": C.guidance, "max_steps": C.max_steps}))"""
NOISE = ("requires torchvision", "Loading pipeline components", "Loading weights", "torch_dtype` is deprecated")


def with_marker(zip_path: Path, top: str, source: str) -> Path:
    """A file naming where this copy of the course came from, so that a notebook can say which way in it took."""
    with zipfile.ZipFile(zip_path, "a") as z:
        z.writestr(f"{top}/source.txt", source)
    return zip_path


def phone_photos(folder: Path) -> Path:
    from PIL import Image
    folder.mkdir(parents=True)
    for i, (p, (w, h)) in enumerate(zip(sorted(DOG6.glob("*.jpg")), [(4, 3), (16, 9), (9, 16)])):
        im = Image.open(p).convert("RGB")
        side = min(im.size)
        box = (0, 0, side, side * h // w) if h < w else (0, 0, side * w // h, side)
        im.crop(box).resize((w * 40, h * 40)).save(folder / f"phone_{i}.jpg")
    return folder


class Colab:
    """The simulated Colab: `content` (one runtime's files), `drive` (kept), the kernels' virtual environment."""

    def __init__(self, root: Path):
        from dbtutor.models.sd15 import save_random_pipeline
        self.root, self.content, self.drive = root, root / "content", root / "drive"
        self.content.mkdir()
        self.drive.mkdir()
        self.mounts = root / "mounts.log"
        save_random_pipeline(root / "small-sd15", dtype="fp32", size="small")
        save_tiny_encoders(root / "encoders")
        self.photos = phone_photos(self.drive / "my_photos")
        for name, text in STANDIN.items():                       # a namespace portion: google.protobuf still loads
            (root / "standin" / "google" / "colab").mkdir(parents=True, exist_ok=True)
            (root / "standin" / "google" / "colab" / name).write_text(text)
        self.venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(self.venv)],
                       check=True)
        self.python = self.venv / "bin" / "python"
        site = Path(subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        assert site != Path(sysconfig.get_paths()["purelib"])
        self.site = site
        (site / "colab_standin.pth").write_text(str(root / "standin") + "\n")
        spec = root / "jupyter" / "kernels" / KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [str(self.python), "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.exec_lines=import google.colab"],
            "display_name": "Colab (stand-in)", "language": "python"}))
        # the course as GitHub's "Download ZIP" makes it: dbtutor-main/ holding what git tracks here
        course_zip = load_script("tools/course_zip.py")
        github = root / "dbtutor-main.zip"
        course_zip.make_zip(github, top="dbtutor-main", root=ROOT)
        self.drive_zip = with_marker(shutil.copy(github, self.drive / "dbtutor-main.zip"), "dbtutor-main",
                                     "a zip in Drive")
        self.upload = with_marker(shutil.copy(github, root / "upload.zip"), "dbtutor-main", "a zip uploaded to Colab")
        self.repo = root / "repo"                                   # REPO's stand-in: a git repository of the course
        shutil.unpack_archive(github, root / "unzipped")
        shutil.move(root / "unzipped" / "dbtutor-main", self.repo)
        (self.repo / "source.txt").write_text("REPO")
        for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
            subprocess.run(["git", *cmd], cwd=self.repo, check=True)
        self.env = {
            "JUPYTER_PATH": str(root / "jupyter"), "JUPYTER_DATA_DIR": str(root / "jupyter"),
            "DBTUTOR_COLAB_CONTENT": str(self.content), "COLAB_STANDIN_DRIVE": str(self.drive),
            "COLAB_STANDIN_MOUNTS": str(self.mounts), "HF_HUB_CACHE": str(self.content / ".cache" / "hub"),
            "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",     # pip offline, setuptools from this machine
            "HF_HUB_OFFLINE": "1",
            "DBTUTOR_PRETRAINED": str(root / "small-sd15"),
            "DBTUTOR_NB_RESOLUTION": "64", "DBTUTOR_NB_CHECKPOINT_EVERY": "3", "DBTUTOR_NB_NUM_REG_IMAGES": "4",
            "DBTUTOR_NB_SAMPLES_PER_PROMPT": "2", "DBTUTOR_NB_SAMPLER_STEPS": "3", "DBTUTOR_NB_SAMPLE_BATCH": "2",
            "DBTUTOR_NB_DTYPE": "float16",
            "DBTUTOR_SIMULATE_CUDA": "1",        # dbtutor/core/hooks.py: sampling under float16 autocast, as on a GPU
            "DBTUTOR_NB_LR": "0.005",            # LoRA moves the samples visibly in 6 steps: 07's checks can fail
            "DBTUTOR_CLIP_MODEL": str(root / "encoders" / "clip"), "DBTUTOR_DINO_MODEL": str(root / "encoders" / "dino"),
            "OMP_NUM_THREADS": os.environ.get("DBTUTOR_TEST_THREADS", "2"),
        }

    def new_runtime(self, uploads=()):
        """A new Colab runtime: /content empty (uploads put in it), the course not installed; Drive as it was."""
        shutil.rmtree(self.content)
        self.content.mkdir()
        for f in uploads:
            shutil.copy(f, self.content / "dbtutor.zip")
        if list(self.site.glob("dbtutor-*.dist-info")):            # never this checkout's own install
            subprocess.run([str(self.python), "-m", "pip", "uninstall", "-y", "-q", "dbtutor"], check=True)
        assert not list(self.site.glob("dbtutor-*.dist-info")) and not list(self.site.glob("__editable__*dbtutor*"))
        self.mounts.write_text("")

    def run(self, number: str, edit=None, allow_cpu=True, uploads=(), rerun_install=False):
        """Notebook `number` in a new runtime, `edit`ed as the learner edits it; returns the executed notebook,
        its text output and what the probe cell at its end printed (None when it stopped before)."""
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        self.new_runtime(uploads)
        nb = nbformat.read(NOTEBOOKS[number], as_version=4)
        if edit:
            edit(nb)
        if rerun_install:                                           # the learner runs the install cell twice
            nb.cells.insert(3, nbformat.v4.new_code_cell(nb.cells[2].source))
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
        env = {k: v for k, v in os.environ.items()           # not this checkout (PYTHONPATH), not its settings
               if not k.startswith(("DBTUTOR_", "PYTHONPATH", "JUPYTER_", "HF_", "PIP_"))}
        env.update(self.env, **({"DBTUTOR_ALLOW_CPU": "1"} if allow_cpu else {}))
        jupyter_path = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = self.env["JUPYTER_PATH"]     # where the kernel's spec is found
        try:
            NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                           resources={"metadata": {"path": str(self.content)}}).execute(env=env)
        except CellExecutionError:
            if allow_cpu:
                raise
        finally:
            os.environ.pop("JUPYTER_PATH")
            if jupyter_path is not None:
                os.environ["JUPYTER_PATH"] = jupyter_path
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        text = "\n".join(o.get("text", "") for o in outputs)
        probe = [json.loads(ln[5:]) for ln in text.splitlines() if ln.startswith("PROBE")]
        return nb, text, probe[0] if probe else None

    def runs(self) -> list[Path]:
        folder = self.drive / "dbtutor" / "work" / "runs"
        return sorted(p for p in folder.iterdir() if re.match(r"(no)?prior", p.name)) if folder.is_dir() else []


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    return Colab(tmp_path_factory.mktemp("colab"))


def set_params(nb, **values):
    """Edit the parameters cell as a learner does: NAME = None becomes NAME = value."""
    cell = nb.cells[3]
    for name, value in values.items():
        cell.source, n = re.subn(rf"^{name} = None", f"{name} = {value!r}", cell.source, flags=re.M)
        assert n == 1, name


STATE = {}


def trained(run: Path) -> dict:
    """What training writes into a run's folder (weights, history, config, card, checkpoints), each file's time:
    it changes if the run is trained again. Not its latent cache (latents/), which a notebook may encode again
    without training (tests/test_latent_cache.py has its own checks)."""
    return {f: f.stat().st_mtime_ns for f in run.rglob("*") if "latents" not in f.relative_to(run).parts}


def check_runtime(colab, number, text, probe, source):
    """What every runtime after the first shows: the course installed from `source` into the runtime, the
    learner's choices from 01 back (not set here), WORK and the hub cache in Drive, Drive asked for once."""
    home = colab.content / "dbtutor"
    assert probe["package"] == str(home / "dbtutor" / "__init__.py") and probe["source"] == source
    assert f"dbtutor installed from {home}" in text
    assert probe["work"] == str(colab.content / "drive" / "MyDrive" / "dbtutor" / "work")
    assert (probe["profile"], probe["class_noun"], probe["guidance"]) == ("sd15", "puppy", 6.0)
    assert probe["subject_dir"] == str(colab.content / "drive" / "MyDrive" / "my_photos")
    assert colab.mounts.read_text().splitlines() == [str(colab.content / "drive")]
    cache = colab.content / ".cache" / "hub"
    assert cache.is_symlink() and cache.resolve() == (colab.drive / "dbtutor" / "hub").resolve()
    for noise in NOISE:
        assert noise not in text, f"{number} prints library noise: {noise}"


def choices_in_01(colab):
    """What the learner sets in 01's parameters cell, and nowhere else: sd15, their photos in Drive (/content is
    the test's folder here), their class noun, a guidance scale (a setting that names a run)."""
    photos = str(colab.content / "drive" / "MyDrive" / "my_photos")
    return lambda nb: set_params(nb, PROFILE="sd15", SUBJECT_DIR=photos, CLASS_NOUN="puppy", GUIDANCE=6.0)


def test_a_cpu_runtime_installs_from_the_zip_in_drive_then_stops_at_setup_in_one_line(colab):
    """The learner put the zip in Drive, opened 01, chose sd15, forgot the GPU: the course comes in from the zip
    in Drive, setup keeps it and the choices in Drive, then stops in one line naming the GPU runtime."""
    nb, text, probe = colab.run("01", choices_in_01(colab), allow_cpu=False)
    assert probe is None and f"dbtutor installed from {colab.content / 'dbtutor'}" in text
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert [e.ename for e in errors] == ["SystemExit"] and "Runtime → Change runtime type → T4 GPU" in errors[0].evalue
    assert "\n" not in errors[0].evalue and "course.py" not in "".join(errors[0].traceback)
    assert "To exit" not in text
    assert (colab.drive / "dbtutor" / "pyproject.toml").is_file() and (colab.drive / "dbtutor" / "source.txt"
                                                                       ).read_text() == "a zip in Drive"
    kept = json.loads((colab.drive / "dbtutor" / "work" / "course.json").read_text())
    assert kept["profile"] == "sd15" and kept["settings"]["sd15"]["class_noun"] == "puppy"
    (colab.drive / "dbtutor" / "source.txt").write_text("the course kept in Drive")
    STATE["drive_pyproject"] = (colab.drive / "dbtutor" / "pyproject.toml").stat().st_mtime_ns


def test_01_on_a_gpu_runtime_installs_an_uploaded_zip_and_the_install_cell_run_again_does_nothing(colab):
    nb, text, probe = colab.run("01", choices_in_01(colab), uploads=[colab.upload], rerun_install=True)
    assert nb.cells[3].outputs == []                                # the second run: nothing done, nothing asked
    check_runtime(colab, "01", text, probe, "a zip uploaded to Colab")
    assert "profile sd15 (this notebook)" in text


@pytest.mark.parametrize("number", ["02", "03", "04", "05", "06", "07"])
def test_each_later_notebook_in_its_own_runtime_finds_the_course_the_choices_and_the_runs(colab, number):
    """Default parameters (only 02 sets MAX_STEPS; 03 takes the course from REPO): the course from Drive, 01's
    choices, 02's run reused by 05, 06 and 07, nothing trained twice."""
    edit, source = None, "the course kept in Drive"
    if number == "02":
        edit = lambda nb: set_params(nb, MAX_STEPS=6)               # noqa: E731
    if number == "03":
        edit = lambda nb: setattr(nb.cells[2], "source", nb.cells[2].source.replace(   # noqa: E731
            'REPO = ""', f'REPO = "file://{colab.repo}"'))
        source = "REPO"
    runs_before = {p: trained(p) for p in colab.runs()}
    nb, text, probe = colab.run(number, edit)
    check_runtime(colab, number, text, probe, source)
    assert "profile sd15 (an earlier notebook)" in text and probe["max_steps"] == 6
    for run, files in runs_before.items():                         # no earlier run trained again
        assert trained(run) == files, f"{number} trained {run.name} again"
    new = sorted(set(colab.runs()) - set(runs_before))
    STATE[number] = new
    expected = {"02": 1, "03": 0, "04": 0, "05": 1, "06": 2, "07": 1}[number]   # 05: its loop's reference run;
    assert len(new) == expected, f"{number} trained {[p.name for p in new]}"  # 06: without, λ=0.3; 07: text encoder
    if number == "03":
        assert (colab.content / "dbtutor" / ".git").is_dir()


def test_the_runs_are_the_courses_and_the_course_stayed_as_kept(colab):
    """Every run has 02's steps and 01's guidance (set once, in those notebooks' cells); the course in Drive was
    not unpacked or copied again."""
    from omegaconf import OmegaConf
    runs = colab.runs()
    assert len(runs) == 5 and STATE["02"][0] in runs
    for run in runs:
        cfg = OmegaConf.load(run / "dreambooth.yaml")
        assert cfg.model.sampling.guidance_scale == 6.0 and cfg.model.data.instance_dir.endswith("MyDrive/my_photos")
        assert cfg.trainer.max_steps == (20 if run in STATE["05"] else 6)
    assert (colab.drive / "dbtutor" / "pyproject.toml").stat().st_mtime_ns == STATE["drive_pyproject"]
