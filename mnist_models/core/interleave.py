"""Interleaving two sides: the order of their blocks, the pairing, and the paired ratio.

Two sides (two variants, two commits, synced and unsynced DDP steps, two whole training processes)
are compared in rounds of one block each. The order inside a round alternates (A B, B A, A B ...),
so that a side never always runs first, after the other has warmed the caches or woken the
threads; a round's two blocks see the same machine, and drift cancels in their ratio. The ratio and
its interval (core.stats.paired_ratio) are B over A per round; every comparison of the project goes
through `alternate` and `paired`.
"""

from __future__ import annotations

from collections.abc import Callable

from .stats import Ratio, paired_ratio


def a_first(round_index: int, start_with_a: bool = True) -> bool:
    """Whether side A runs first in this round: every other round, starting with A unless told otherwise."""
    return (round_index % 2 == 0) == start_with_a


def alternate(
    run_a: Callable[[], float], run_b: Callable[[], float], rounds: int, start_with_a: bool = True
) -> list[tuple[float, float]]:
    """`rounds` paired blocks [(a, b), ...], the order alternating inside each round."""
    pairs = []
    for i in range(rounds):
        if a_first(i, start_with_a):
            a = run_a()
            pairs.append((a, run_b()))
        else:
            b = run_b()
            pairs.append((run_a(), b))
    return pairs


def paired(run_a: Callable[[], float], run_b: Callable[[], float], rounds: int, start_with_a: bool = True) -> Ratio:
    """B over A from `rounds` alternating rounds, with its interval at the level it has."""
    return paired_ratio(alternate(run_a, run_b, rounds, start_with_a))
