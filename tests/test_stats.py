"""The intervals print the level they have: exact order-statistic levels, checked by simulation on
rounds shaped like this project's (right-skewed bursts, a machine drifting between and inside rounds),
and the measurement core's plant measures as planted."""

import math
import random

import pytest

from mnist_models.core import blocks
from mnist_models.core.interleave import a_first, alternate, paired
from mnist_models.core.stats import LEVEL, MIN_ROUNDS_FOR_LEVEL, median_ranks, paired_ratio


def test_levels_are_exact_binomial_levels():
    assert median_ranks(3) == (1, 0.75)  # the range of 3 rounds: 1 - 2 / 8
    assert median_ranks(5) == (1, 1 - 2 / 32)  # 93.75%: still the range, still below 95%
    assert median_ranks(6)[1] == pytest.approx(1 - 2 / 64) and median_ranks(6)[1] >= LEVEL
    k, level = median_ranks(10)
    assert k == 2 and level == pytest.approx(1 - 2 * 11 / 1024)  # 97.9%: the 2nd smallest and 2nd largest
    assert all(median_ranks(n)[1] >= LEVEL for n in range(MIN_ROUNDS_FOR_LEVEL, 60))


def test_a_ratio_prints_its_real_level_never_a_nominal_95():
    three = paired_ratio([(1.0, 1.01), (1.0, 0.99), (1.0, 1.03)])
    assert three.level == 0.75 and "range of 3 rounds, 75%" in str(three) and "95%" not in str(three)
    ten = paired_ratio([(1.0, 1 + i / 100) for i in range(10)])
    assert "97.9% interval" in str(ten) and (ten.low, ten.high) == pytest.approx((1.01, 1.08))
    with pytest.raises(ValueError):
        paired_ratio([(0.0, 1.0)])


def simulated_rounds(rng: random.Random, n: int, ratio: float) -> list[tuple[float, float]]:
    """Rounds like ours: the machine drifts by a random walk between rounds (both sides see it), the
    second block of a round pays a little more (the order alternates), each block is right-skewed by
    bursts of contention."""
    speed, pairs = 0.030, []
    for i in range(n):
        speed *= math.exp(rng.gauss(0, 0.08))

        def block(rng=rng, speed=speed):
            burst = rng.expovariate(1 / 0.15) if rng.random() < 0.15 else 0.0
            return speed * math.exp(rng.gauss(0, 0.02)) * (1 + burst)

        second = 1 + abs(rng.gauss(0, 0.02))
        if a_first(i):
            pairs.append((block(), ratio * block() * second))
        else:
            pairs.append((block() * second, ratio * block()))
    return pairs


@pytest.mark.parametrize("n", [3, 5, 6, 10, 15])
def test_the_printed_level_is_met_by_simulation(n):
    rng, trials, ratio = random.Random(n), 3000, 1.07
    covered = 0
    for _ in range(trials):
        r = paired_ratio(simulated_rounds(rng, n, ratio))
        covered += r.low <= ratio <= r.high
    level = median_ranks(n)[1]
    slack = 3 * math.sqrt(level * (1 - level) / trials)  # three standard errors of the simulated share
    assert covered / trials >= level - slack, (n, covered / trials, level)


def test_a_busy_wait_plant_measures_as_planted():
    work = lambda: blocks.busy_wait(0.002)  # noqa: E731  a fixed 2 ms of real spinning work
    ratio = paired(
        lambda: blocks.time_block(work, 5), lambda: blocks.time_block(work, 5, plant=0.10), rounds=MIN_ROUNDS_FOR_LEVEL
    )
    # the spin overshoots its deadline by a clock read (well under 0.1% of a 2 ms step)
    assert ratio.low - 0.002 <= 1.10 <= ratio.high + 0.002 and ratio.estimate == pytest.approx(1.10, abs=0.005), ratio


def test_blocks_and_alternation():
    calls = []
    pairs = alternate(lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0, 4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"] and pairs == [(1.0, 2.0)] * 4
    calls.clear()
    alternate(lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0, 2, start_with_a=False)
    assert calls == ["b", "a", "a", "b"]
    ticks = []
    times = blocks.time_steps(lambda: ticks.append(1), 3)
    assert len(times) == 3 and len(ticks) == 4  # one untimed call settles the caches first
    alternating = [0.020, 0.030] * 7 + [0.020]  # 15 steps, every other one 10 ms dearer: a median skips it
    assert blocks.trimmed_mean(alternating) == pytest.approx(0.025, abs=0.001)
    assert blocks.trimmed_mean([0.020] * 14 + [0.500]) == pytest.approx(0.020)  # one hiccup: out
