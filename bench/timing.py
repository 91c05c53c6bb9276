"""What the benchmarks share for timing and printing: say (printed at once), med, and paired_ratio (the median of
per-round ratios of contenders that alternate, so the load of a busy machine hits both sides alike)."""
from __future__ import annotations

import statistics


def say(*a):
    print(*a, flush=True)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(num, den):
    """Median of per-round ratios (rounds are adjacent in time, so the machine's load cancels)."""
    n = min(len(num), len(den))
    return med([a / b for a, b in zip(num[:n], den[:n])])
