"""Time-to-accuracy targets: the test accuracy a run must reach, per dataset and net, with where each comes from.

MLPerf Training fixes one quality target per benchmark and times the run to it. Here the target on
fashion-mnist is what the seed's own recipe buys: the mean final test accuracy (15 epochs, Adam 1e-3,
batch 100) over seeds 777-781, rounded down to the whole percent, so that most seed-recipe runs reach
it within their budget and a faster recipe is held to the seed's quality. The records behind each
figure are committed under reports/machines/*/runs/fashion-mnist/; `mnist-bench report` prints the
mean it finds beside the target, so a drift shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..system.errors import UsageError


@dataclass(frozen=True)
class Target:
    accuracy: float
    source: str


TARGETS: dict[tuple[str, str], Target] = {
    ("fashion-mnist", "simple"): Target(
        0.91,
        "the seed recipe's mean final test accuracy over seeds 777-781, 0.9160 (n=5: 777-779 on a Zen 5, 780-781 on "
        "a Zen 3, the seed pipeline), rounded down",
    ),
    ("fashion-mnist", "deep"): Target(
        0.92,
        "the seed recipe's mean final test accuracy over seeds 777-781, 0.9245 (n=5: 777-779 on a Zen 5, 780-781 on "
        "a Zen 3, the seed pipeline), rounded down",
    ),
    # mnist-5k (1,000 test images, so one image is 0.1%): stated values a little under what the seed
    # recipe's fp32 runs end at (simple 0.958-0.970, deep 0.972-0.979 over seeds 777-779, Zen 5).
    ("mnist-5k", "simple"): Target(0.95, "stated: under the seed recipe's final 0.958-0.970 (seeds 777-779)"),
    ("mnist-5k", "deep"): Target(0.96, "stated: under the seed recipe's final 0.972-0.979 (seeds 777-779)"),
    # mnist: stated, not measured here (it needs a download); the seed printed 0.9874 / 0.9838 on
    # raw pixels, and both nets pass 0.98 within a few epochs with the scaled inputs.
    ("mnist", "simple"): Target(0.98, "stated: the seed's reported accuracy rounded down"),
    ("mnist", "deep"): Target(0.98, "stated: the seed's reported accuracy rounded down"),
}


def target_for(dataset: str, model: str) -> Target:
    try:
        return TARGETS[(dataset, model)]
    except KeyError:
        raise UsageError(f"no time-to-accuracy target for {model} on {dataset}") from None
