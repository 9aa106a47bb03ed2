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
