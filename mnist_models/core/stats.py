"""The ratio of two interleaved measurements, with an interval whose level is what it prints.

An A/B comparison runs the two sides in alternating rounds (A B, B A, A B ...), so slow drift of a
shared machine (the same train step measured 28 and 42 ms an hour apart) hits both sides of a round
alike. Each round gives one paired ratio B/A; the estimate is their median. Its interval is the
distribution-free one for a median from order statistics: with n independent rounds, the k-th
smallest and k-th largest ratio enclose the true median ratio with probability exactly
1 - 2 P(Binomial(n, 1/2) < k), whatever the ratios' distribution (skewed by bursts of contention
here). k is the largest that keeps that level at or above 95%; below 6 rounds no k does, and the
interval is the whole range of the rounds at the level it really has: 75% for 3 rounds, 93.8% for 5.
The level printed is that exact level, never a nominal one. (The percentile bootstrap used before
printed "95%" at every n; at 3 rounds it is the same range, which covers 75% of the time.)
tests/test_stats.py checks the printed level by simulation on skewed, drifting rounds.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

LEVEL = 0.95  # the level an interval aims for; Ratio.level says the one it has
MIN_ROUNDS_FOR_LEVEL = 6  # the fewest rounds whose interval reaches LEVEL (1 - 2 / 2**6 = 96.9%)


def binomial_tail(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ranks(n: int, level: float = LEVEL) -> tuple[int, float]:
    """The order statistic k (1-based, from each end) for a median interval of n values, and its exact level:
    the largest k whose level is >= `level`, else k = 1 (the range) with the level the range has."""
    if n < 1:
        raise ValueError("an interval needs at least one value")
    best = 1
    for k in range(1, n // 2 + 1):
        if 1 - 2 * binomial_tail(n, k - 1) >= level:
            best = k
    return best, 1 - 2 * binomial_tail(n, best - 1)


def format_level(level: float) -> str:
    """96.9%, 75%, 99.8%: one decimal unless it is a whole percent."""
    pct = 100 * level
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


@dataclass(frozen=True)
class Ratio:
    """B over A: above 1 is slower. `low`-`high`: the order-statistic interval of the median paired
    ratio, which has exactly `level` (for independent rounds)."""

    estimate: float
    low: float
    high: float
    rounds: int
    level: float = LEVEL

    def excludes_one(self) -> bool:
        return self.low > 1 or self.high < 1

    def slower_than(self, threshold: float) -> bool:
        """Slower beyond noise (the interval above 1) and by more than `threshold` (e.g. 0.05)."""
        return self.low > 1 and self.estimate > 1 + threshold

    def faster_than(self, threshold: float) -> bool:
        """Faster beyond noise (the interval below 1) and by more than `threshold`."""
        return self.high < 1 and self.estimate < 1 - threshold

    def verdict(self, threshold: float) -> str:
        if self.slower_than(threshold):
            return "slower"
        if self.faster_than(threshold):
            return "faster"
        return "within noise"

    @property
    def is_range(self) -> bool:
        """Too few rounds for LEVEL: the interval is the rounds' whole range (median_ranks' k = 1)."""
        return self.level < LEVEL

    @property
    def interval_name(self) -> str:
        """'96.9% interval', or 'range of 3 rounds, 75%' where the interval is the rounds' whole range."""
        if self.is_range:
            return f"range of {self.rounds} rounds, {format_level(self.level)}"
        return f"{format_level(self.level)} interval"

    def __str__(self) -> str:
        if self.is_range:
            return f"{self.estimate:.3f}x ({self.interval_name}: {self.low:.3f}-{self.high:.3f})"
        return f"{self.estimate:.3f}x ({self.interval_name} {self.low:.3f}-{self.high:.3f}, {self.rounds} rounds)"

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "rounds": self.rounds, "level": self.level}


def median_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The order-statistic interval of the median of `values`: (low, high, exact level)."""
    ordered = sorted(values)
    k, exact = median_ranks(len(ordered), level)
    return ordered[k - 1], ordered[len(ordered) - k], exact


def paired_ratio(pairs: list[tuple[float, float]], level: float = LEVEL) -> Ratio:
    """The median of the rounds' B/A ratios and its order-statistic interval, with the level it has."""
    if not pairs or any(a <= 0 or b <= 0 for a, b in pairs):
        raise ValueError("paired_ratio needs rounds of two positive times")
    logs = [math.log(b / a) for a, b in pairs]
    low, high, exact = median_interval(logs, level)
    return Ratio(math.exp(statistics.median(logs)), math.exp(low), math.exp(high), len(pairs), exact)


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


@functools.cache
def _arrangements(m: int, n: int, u: int) -> int:
    """Orderings of m x's and n y's with exactly u pairs (x > y): the Mann-Whitney count."""
    if u < 0:
        return 0
    if m == 0 or n == 0:
        return 1 if u == 0 else 0
    return _arrangements(m - 1, n, u - n) + _arrangements(m, n - 1, u)


def mann_whitney_cdf(m: int, n: int, u: int) -> float:
    """P(U <= u) for the Mann-Whitney statistic of samples of m and n with no difference (exact)."""
    return sum(_arrangements(m, n, k) for k in range(u + 1)) / math.comb(m + n, m)


def ratio_interval(
    slow: list[float],
    fast: list[float],
    slow_failures: int = 0,
    fast_failures: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float] | None:
    """The ratio of slow's typical time to fast's, as an interval with its exact level: (low, high, level).

    The runs of two recipes are independent, not paired. Taking log times, the k-th smallest and the
    k-th largest of the m x n differences log(slow_i) - log(fast_j) bound the shift between the two
    (the log of their time ratio) with probability 1 - 2 P(U < k) under the Mann-Whitney statistic U's
    exact null distribution, whatever the distribution of a run's time, provided the two differ by a
    factor (the same spread in log time). k is the largest that keeps the level at or above 95%. A run
    that never reached the target counts as slower than every run that did (an infinite time), as
    MLPerf's olympic mean counts it. None where either side has no olympic mean (fewer than 3 runs, or
    more than one failure), or both sides have failures (their order is unknown)."""
    if olympic_mean(slow, slow_failures) is None or olympic_mean(fast, fast_failures) is None:
        return None
    if slow_failures and fast_failures:
        return None
    a = [math.log(t) for t in slow] + [math.inf] * slow_failures
    b = [math.log(t) for t in fast] + [math.inf] * fast_failures
    m, n = len(a), len(b)
    diffs = sorted(x - y for x in a for y in b)
    best, exact = 1, 1 - 2 * mann_whitney_cdf(m, n, 0)
    for k in range(1, m * n // 2 + 1):
        covered = 1 - 2 * mann_whitney_cdf(m, n, k - 1)
        if covered >= level:
            best, exact = k, covered
    return math.exp(diffs[best - 1]), math.exp(diffs[m * n - best]), exact


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
