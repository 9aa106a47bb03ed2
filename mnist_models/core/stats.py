"""The ratio of two interleaved measurements, with its uncertainty.

An A/B comparison runs the two sides in alternating rounds (A B, B A, A B ...), so slow drift of a
shared machine (the same train step measured 28 and 42 ms an hour apart) hits both sides of a round
alike. Each round gives one paired ratio B/A; the estimate is their median and its interval a
percentile bootstrap over rounds: the rounds are the independent units (steps inside a round are
not: they share the machine's state), and the bootstrap assumes no shape for a ratio's distribution,
which on these machines is skewed by bursts of contention. The resampling is seeded, so one set of
rounds always gives one interval. (pyperf compares with a t-test on independent runs; asv's
`continuous` with a Mann-Whitney test on samples; pairing by round is what interleaving buys.)
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Ratio:
    """B over A: above 1 is slower. `low`-`high`: the bootstrap interval of the median paired ratio."""

    estimate: float
    low: float
    high: float
    rounds: int

    def excludes_one(self) -> bool:
        return self.low > 1 or self.high < 1

    def slower_than(self, threshold: float) -> bool:
        """Slower beyond noise (the interval above 1) and by more than `threshold` (e.g. 0.05)."""
        return self.low > 1 and self.estimate > 1 + threshold

    def verdict(self, threshold: float) -> str:
        if self.slower_than(threshold):
            return "slower"
        if self.high < 1 and self.estimate < 1 - threshold:
            return "faster"
        return "within noise"

    def __str__(self) -> str:
        return f"{self.estimate:.3f}x (95% interval {self.low:.3f}-{self.high:.3f}, {self.rounds} rounds)"

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "rounds": self.rounds}


def paired_ratio(pairs: list[tuple[float, float]], seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> Ratio:
    """The median of the rounds' B/A ratios and its percentile bootstrap interval."""
    if not pairs or any(a <= 0 or b <= 0 for a, b in pairs):
        raise ValueError("paired_ratio needs rounds of two positive times")
    logs = [math.log(b / a) for a, b in pairs]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(logs, k=len(logs))) for _ in range(resamples))
    tail = (1 - level) / 2
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1 - tail) * (resamples - 1))]
    return Ratio(math.exp(statistics.median(logs)), math.exp(low), math.exp(high), len(pairs))


def olympic_mean(times: list[float], failures: int = 0) -> float | None:
    """MLPerf Training's score over runs to a target: drop the fastest and the slowest, average the rest.

    A run that never reached the target counts as the slowest (MLPerf lets one run fail to converge,
    and drops it); with more than one failure, or fewer than 3 runs, there is no olympic mean (None).
    """
    n = len(times) + failures
    if n < 3 or failures > 1:
        return None
    kept = sorted(times)[1:] if failures else sorted(times)[1:-1]
    return statistics.fmean(kept)


def ratio_interval(
    slow: list[float],
    fast: list[float],
    slow_failures: int = 0,
    fast_failures: int = 0,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval (95%) of olympic_mean(slow) / olympic_mean(fast), resampling each
    side's runs (failures included) independently: the runs of two recipes are not paired."""
    rng = random.Random(seed)
    slow_runs = [*slow, *([math.inf] * slow_failures)]
    fast_runs = [*fast, *([math.inf] * fast_failures)]
    ratios = []
    for _ in range(resamples):
        a, b = rng.choices(slow_runs, k=len(slow_runs)), rng.choices(fast_runs, k=len(fast_runs))
        top = olympic_mean([t for t in a if math.isfinite(t)], sum(not math.isfinite(t) for t in a))
        bottom = olympic_mean([t for t in b if math.isfinite(t)], sum(not math.isfinite(t) for t in b))
        if top is not None and bottom:
            ratios.append(top / bottom)
    if len(ratios) < resamples // 2:  # most resamples have no score: too many failures for an interval
        return None
    ratios.sort()
    tail = (1 - LEVEL) / 2
    return ratios[int(tail * (len(ratios) - 1))], ratios[int((1 - tail) * (len(ratios) - 1))]


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation test of the difference of two means: the share of all ways of
    splitting the pooled values into groups of len(a) and len(b) whose mean difference is at least as
    large as the observed one. Exact, no distribution assumed; C(10, 5) = 252 splits for 5 + 5."""
    from itertools import combinations

    pooled, n = [*a, *b], len(a)
    if n == 0 or not b:
        raise ValueError("permutation_p needs two non-empty samples")
    total = sum(pooled)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    hits = count = 0
    for picked in combinations(range(len(pooled)), n):
        s = sum(pooled[i] for i in picked)
        diff = abs(s / n - (total - s) / len(b))
        hits += diff >= observed - 1e-12
        count += 1
    return hits / count
