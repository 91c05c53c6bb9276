"""Peak resident memory of this process, right in a child started by subprocess (the benchmarks' memory figures)."""
from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, because ru_maxrss survives exec() and so reports the
    parent's peak in a child started by subprocess; elsewhere ru_maxrss (KB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024
