"""Two runs on one folder: the second stops at once with one line naming the folder and the holder, or waits when
asked; a holder killed with kill -9 blocks nobody, and its stale record does not name it."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dbtutor
from dbtutor.core.locks import LOCK, OWNER, FolderLock, hold

from conftest import ROOT

HOLDER = """
import sys, time
from pathlib import Path
if sys.argv[3] == "dbtutor":                      # as a run does: the lock and its record
    from dbtutor.core.locks import hold
    lock = hold(sys.argv[1], "output_dir")
else:                                             # the bare flock, no record (a holder that has not named itself)
    from filelock import FileLock
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(sys.argv[1]) / ".dbtutor.lock"))
with lock:
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(folder: Path, seconds: float, kind: str = "dbtutor") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds), kind], stdout=subprocess.PIPE,
                         text=True, env=env, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def stop(p: subprocess.Popen):
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_dir_stops_at_once_naming_the_other(tiny_config, tmp_path):
    cfg = tiny_config(**{"trainer.max_steps": 1})
    out = Path(cfg.output_dir)
    holder = start_holder(out, 120)
    try:
        t0 = time.monotonic()
        with pytest.raises(dbtutor.LockedError) as e:
            dbtutor.train(cfg)
        assert time.monotonic() - t0 < 10                     # before any model is loaded
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"output_dir {out} is in use by another run")
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg and "trainer.wait_for_lock=true" in msg
        assert not (out / "model_index.json").exists()
        # the command line: exit status 2 and that one line
        cfg_file = tmp_path / "run.yaml"
        cfg_file.write_text(dbtutor.core.config.to_yaml(cfg))
        r = subprocess.run([sys.executable, "-m", "dbtutor", "train", "--config", str(cfg_file)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [f"dbtutor: error: {msg}"]
    finally:
        stop(holder)


@pytest.mark.slow
def test_waiting_for_the_lock_when_asked(tiny_config, capsys):
    cfg = tiny_config(**{"trainer.max_steps": 1, "trainer.wait_for_lock": 1})
    out = Path(cfg.output_dir)
    holder = start_holder(out, 6)
    try:
        t0 = time.monotonic()
        with pytest.raises(dbtutor.LockedError, match="still in use after 1 s of waiting"):
            dbtutor.train(cfg)
        assert 1 <= time.monotonic() - t0 < 10
        res = dbtutor.train(tiny_config(**{"trainer.max_steps": 1, "trainer.wait_for_lock": True}))
        assert holder.poll() == 0                             # it ran after the holder was done
        assert [h["step"] for h in res.history] == [1]
    finally:
        stop(holder)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("waiting for")]
    assert len(said) == 2 and all(f"waiting for output_dir {out}: pid {holder.pid}" in s for s in said)


@pytest.mark.slow
def test_a_killed_holder_blocks_nobody_and_its_record_names_nobody(tiny_config, tmp_path):
    cfg = tiny_config(**{"trainer.max_steps": 1})
    out = Path(cfg.output_dir)
    killed = start_holder(out, 120)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert json.loads((out / OWNER).read_text())["pid"] == killed.pid     # its record stays behind, stale
    # a holder that has the lock but has not written its record yet: the stale record must not be named
    bare = start_holder(out, 120, kind="bare")
    try:
        with pytest.raises(dbtutor.LockedError) as e:
            dbtutor.train(cfg)
        assert f"pid {killed.pid}" not in str(e.value) and "not named itself" in str(e.value)
    finally:
        stop(bare)
    res = dbtutor.train(cfg)                                  # the OS released both flocks: the run goes ahead
    assert [h["step"] for h in res.history] == [1]
    assert (out / LOCK).exists() and not (out / OWNER).exists()          # let go: no record, an empty lock file


@pytest.mark.parametrize("folder,what", [("reg", "model.data.regularization_dir"), ("out/latents/instance",
                                                                                     "the latent cache")])
@pytest.mark.slow
def test_the_class_images_and_the_cache_are_locked_while_written(tiny_config, tmp_path, folder, what):
    cfg = tiny_config(**{"trainer.max_steps": 1})
    holder = start_holder(tmp_path / folder, 120)
    try:
        with pytest.raises(dbtutor.LockedError, match=f"^{what} {tmp_path / folder} is in use by another run "
                                                      f"\\(pid {holder.pid} "):
            dbtutor.train(cfg)
    finally:
        stop(holder)


def test_holding_a_folder_again_in_the_same_process_is_a_no_op(tmp_path):
    """reg_dir = output_dir, say: the run holds one lock, and lets go only at the outermost end."""
    with hold(tmp_path, "output_dir"):
        with hold(tmp_path, "model.data.regularization_dir"):
            pass
        assert not FolderLock(tmp_path, "x").acquire(0)      # still held (another descriptor cannot take it)
    other = FolderLock(tmp_path, "x")
    assert other.acquire(0)
    other.release()
