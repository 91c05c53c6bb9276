"""Library noise that tells a learner nothing (loading bars, advice the course never needs), silenced at its source."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager


def quiet_libraries():
    """Silence library noise that tells a learner nothing, at its source: loading progress bars, the advice to
    install torchvision (the course never needs it), diffusers' note on casting with .to() and its note that a LoRA
    file has no text-encoder part. Hub download bars and every other warning still show."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    noise = re.compile(r"requires torchvision|should be kept in float32: \[\]|No LoRA keys associated to CLIPTextModel")
    for name in ("transformers", "diffusers"):
        log = logging.getLogger(name)
        if not any(getattr(f, "dbtutor", False) for f in log.filters):
            f = logging.Filter()
            f.filter = lambda record: not noise.search(record.getMessage())
            f.dbtutor = True
            log.addFilter(f)
            for h in log.handlers:
                h.addFilter(f)


@contextmanager
def no_progress_bars():
    """diffusers' and transformers' own progress bars off inside the `with`, back on after (those that were on);
    quiet_libraries switches them off for good."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl
    on = [m for m in (dl, tl) if m.is_progress_bar_enabled()]
    for m in on:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m in on:
            m.enable_progress_bar()
