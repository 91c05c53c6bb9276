"""Folder locks (filelock): one run at a time writes an output_dir, a class-image folder or a latent cache.

A run holds its output_dir's lock from start to end, and a class-image folder's or a latent cache's while it fills
them. Another run that needs a held folder stops at once with one line naming the folder and the holder (pid and
host), or, with trainer.wait_for_lock, waits for it. The lock is an OS file lock (flock; on Windows msvcrt): the
OS drops it when its process ends, even by kill -9, so a dead run never blocks the next one. Who holds it is
written next to it (OWNER), for the message only: a record left by a killed process is never trusted.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError
from .fileio import pid_alive

LOCK = ".dbtutor.lock"            # stays in the folder, empty; deleting it while no run is going is safe
OWNER = ".dbtutor.lock.owner"     # {"pid", "host", "since"} of the holder; removed when it lets go
LOCK_FILES = (LOCK, OWNER)
POLL = 30.0                       # seconds between attempts while waiting: under accelerate every process syncs
_held: dict[str, int] = {}        # folders this process holds (real path -> depth): holding one again is a no-op


def wait_limit(wait) -> float | None:
    """trainer.wait_for_lock -> seconds to wait: false = 0 (stop at once), true = None (as long as it takes)."""
    if wait is True:
        return None
    return 0.0 if wait is False or wait is None else float(wait)


def holder(folder) -> str:
    """'pid 123 on host, since 12:00:01', from the record next to the lock; a record whose process is not running
    here (written by a killed run, or not yet rewritten by the new holder) names nobody."""
    path = Path(folder) / OWNER
    for _ in range(10):                       # a holder that has just taken the lock writes its record at once
        try:
            rec = json.loads(path.read_text())
            pid, host = int(rec["pid"]), str(rec["host"])
        except (OSError, ValueError, KeyError, TypeError):
            rec = None
        else:
            if host != socket.gethostname() or pid_alive(pid):
                return f"pid {pid} on {host}, since {rec.get('since', '?')}"
        time.sleep(0.1)
    return "a process that has not named itself yet"


class FolderLock:
    """The lock of one folder; `acquire(timeout)` returns False if another process still holds it."""

    def __init__(self, folder, what: str):
        from filelock import FileLock
        self.folder, self.what = Path(folder), what
        self._lock = FileLock(str(self.folder / LOCK))

    def acquire(self, timeout: float) -> bool:
        from filelock import Timeout
        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.1)
        except Timeout:
            return False
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.folder / OWNER).write_text(json.dumps(record))     # one small write; a reader retries a torn one
        return True

    def release(self):
        (self.folder / OWNER).unlink(missing_ok=True)
        self._lock.release()

    def busy(self, waited: float | None = None) -> str:
        how = f"still in use after {waited:.0f} s of waiting" if waited else "in use"
        return (f"{self.what} {self.folder} is {how} by another run ({holder(self.folder)}): let it finish, "
                f"set trainer.wait_for_lock=true to wait for it, or use another folder")


def _attempt(lock: FolderLock, limit: float | None, t0: float, tries: int) -> str:
    """One try of the holding process: 'ok', 'wait' (try again), or the one-line error."""
    left = None if limit is None else limit - (time.monotonic() - t0)
    if lock.acquire(0 if tries == 0 else min(POLL, POLL if left is None else max(left, 0))):
        return "ok"
    if left is not None and left <= 0 or limit == 0:
        return lock.busy(waited=limit)
    if tries == 0:
        print(f"waiting for {lock.what} {lock.folder}: {holder(lock.folder)} uses it", flush=True)
    return "wait"


@contextmanager
def hold(folder, what: str, wait=False, accelerator=None):
    """Hold `folder`'s lock (creating the folder) for the block; LockedError (one line) if another run holds it
    and `wait` (trainer.wait_for_lock: false, true or seconds) does not outlast it.

    Several processes (an `accelerator` with num_processes > 1): only the main process takes the lock, the others
    follow its outcome (broadcast); while it waits every process meets it every POLL seconds, so no collective
    call waits long. A folder that cannot be written (your own read-only photos) is not locked: nothing writes it."""
    multi = accelerator is not None and accelerator.num_processes > 1
    main = accelerator is None or accelerator.is_main_process
    key, lock, status, tries, t0 = os.path.realpath(folder), None, "", 0, time.monotonic()
    while status not in ("ok", "held", "skip"):
        if main:
            if key in _held:
                status = "held"
            elif tries == 0 and not _writable(Path(folder)):
                status = "skip"
            else:
                lock = lock or FolderLock(folder, what)
                status = _attempt(lock, wait_limit(wait), t0, tries)
        if multi:
            from accelerate.utils import broadcast_object_list
            status = broadcast_object_list([status], from_process=0)[0]
        if status not in ("ok", "held", "skip", "wait"):
            raise LockedError(status)
        tries += 1
    if main and status != "skip":
        _held[key] = _held.get(key, 0) + 1
    try:
        yield
    finally:
        if main and status != "skip":
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
                lock.release()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
