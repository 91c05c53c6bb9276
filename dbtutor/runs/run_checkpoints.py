"""A training run's checkpoints: every trainer.checkpoint_every steps, on Ctrl-C, and the final save at the end.

checkpoint.py writes and reads one checkpoint folder; this module decides when, for the run being trained:

    saves = RunCheckpoints(cfg, accelerator, modules, optimizer, lr_sched, history, begin)
    for step in ...:                        # after each step, with `done` = step + 1 steps trained
        saves.maybe_save(done)              # every trainer.checkpoint_every steps (not at the last one)
        saves.on_interrupt(done)            # Ctrl-C came during the step: save it, then KeyboardInterrupt
    saves.close()                           # Ctrl-C acts at once again
    saves.finish(pipe)                      # the final pipeline; the checkpoints go (or all but the last one)
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from . import checkpoint as ckpt


class DeferredInterrupt:
    """Ctrl-C (SIGINT) during training: finish the current step, save a checkpoint, then stop.

    Installed for the training loop (main thread only); `requested` turns true on the first Ctrl-C, and the loop
    saves and raises KeyboardInterrupt at the end of the step. A second Ctrl-C stops at once (the last checkpoint
    is kept). `restore()` puts the previous handler back."""

    def __init__(self):
        self.requested, self._installed, self._previous = False, False, None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


class RunCheckpoints:
    """When one run saves: a checkpoint every trainer.checkpoint_every steps and on Ctrl-C, the pipeline at the end.

    `modules` are the trained ones ({'unet'} or {'unet', 'text_encoder'}), `optimizer` the prepared one, `history`
    the run's loss history (the list the loop appends to), `begin` where the run started (resume.Start). Creating it
    installs the deferred Ctrl-C handler; close() removes it."""

    def __init__(self, cfg, accelerator, modules: dict, optimizer, lr_sched, history: list[dict], begin):
        self.cfg, self.accelerator, self.out = cfg, accelerator, Path(cfg.output_dir)
        self.modules, self.optimizer, self.lr_sched, self.history = modules, optimizer, lr_sched, history
        self.finished = begin.finished      # output_dir holds this very run already: nothing to save
        self.last_saved = begin.step
        self.stop = DeferredInterrupt()     # Ctrl-C: finish the step, save it, stop

    def _write(self, step: int) -> None:
        """The checkpoint of `step` steps, as this process sees the run (call it on the main process)."""
        a = self.accelerator
        ckpt.save(self.out, self.cfg, self.modules, self.optimizer, self.lr_sched, step, self.history,
                  a.num_processes, a.scaler)

    def save(self, step: int) -> None:
        """A checkpoint after `step` steps, written by the main process while the others wait."""
        a = self.accelerator
        a.wait_for_everyone()
        if a.is_main_process:
            self._write(step)
        a.wait_for_everyone()

    def maybe_save(self, step: int) -> None:
        """After `step` steps: a checkpoint if trainer.checkpoint_every says so (the last step saves the pipeline)."""
        tr = self.cfg.trainer
        if tr.checkpoint_every and step % tr.checkpoint_every == 0 and step < tr.max_steps:
            self.save(step)
            self.last_saved = step

    def on_interrupt(self, step: int) -> None:
        """After `step` steps: if Ctrl-C was pressed, save them (unless saved already) and raise KeyboardInterrupt.
        No barrier here: the other processes may be gone already."""
        if not self.stop.requested:
            return
        if step > self.last_saved and self.accelerator.is_main_process:
            self._write(step)
        raise KeyboardInterrupt

    def close(self) -> None:
        """Put the previous Ctrl-C handler back: a second Ctrl-C now stops at once, keeping the last checkpoint."""
        self.stop.restore()

    def finish(self, pipe) -> None:
        """After the last step: the final pipeline saved, then output_dir/checkpoints removed, or with
        trainer.keep_checkpoints all but a checkpoint of the last step (to continue exactly)."""
        tr, a = self.cfg.trainer, self.accelerator
        if tr.keep_checkpoints and not self.finished:
            self.save(tr.max_steps)
        a.wait_for_everyone()
        if a.is_main_process:
            if not self.finished:           # else output_dir holds this very pipeline already
                ckpt.save_pipeline(pipe, self.cfg, self.out, self.history)
            ckpt.finish(self.out, tr.keep_checkpoints)   # only now: the checkpoints go (or all but the last one)
