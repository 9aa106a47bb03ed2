"""Timing a block of work: the one clock every timed loop of the project goes through.

A block is `steps` calls of one warmed-up callable (which ends with its device's synchronize, see
core.harness.Workload.call_on), after one untimed call that brings caches and threads back after
whatever ran before. Its figure is the trimmed mean of its steps (`BLOCK_STATISTIC`): a cost paid
every other step (glibc's malloc faulting a step's freed memory back in, system/allocator.py) is
half of a block's steps, which a median can skip and an epoch pays in full; trimming 20% at each
end keeps a rare hiccup of the machine out.

A planted slowdown (`plant`) busy-waits that share of each step's own time inside the step's
timing, so the block measures exactly `1 + plant` times the step. A sleep would not: it lets the
OpenMP pool park, and the next step pays for waking it (a planted 10% measured 17-50% on a Zen 3).

This file imports only the standard library: an A/B worker running an older commit's package
loads it by path from the current checkout, so both sides of a comparison are timed by this code.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

TRIM = 0.2  # share of steps dropped at each end of a block
BLOCK_STATISTIC = "trimmed_mean"


def trimmed_mean(times: list[float]) -> float:
    """The mean of the middle steps (all of them when there are too few to trim)."""
    ordered = sorted(times)
    cut = int(len(ordered) * TRIM)
    return statistics.fmean(ordered[cut : len(ordered) - cut] or ordered)


def busy_wait(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Spin on this thread for `seconds`: the core stays busy, as it would for real work."""
    deadline = clock() + seconds
    while clock() < deadline:
        pass


def time_steps(call: Callable[[], object], steps: int, plant: float = 0.0, settle: bool = True) -> list[float]:
    """Seconds of each of `steps` calls, after one untimed call (`settle`); each stretched by `plant` of
    its own time with a busy-wait when asked."""
    if steps < 1:
        raise ValueError("a block needs at least one step")
    if settle:
        call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        if plant:
            busy_wait(plant * (time.perf_counter() - start))
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    """A block's figure and its median, as an A/B worker reports them."""
    return {f"{BLOCK_STATISTIC}_s": trimmed_mean(times), "median_s": statistics.median(times), "steps": len(times)}


def time_block(call: Callable[[], object], steps: int, plant: float = 0.0, settle: bool = True) -> float:
    """The block's figure: the trimmed mean of `steps` timed calls."""
    return trimmed_mean(time_steps(call, steps, plant, settle))
