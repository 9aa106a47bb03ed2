"""mnist-bench bisect: the bisection's decisions on a table of ratios, and on a real history of commits
whose train step is slowed by a busy-wait in one commit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_models.core.stats import Ratio
from mnist_models.runs.bisect import bisect
from mnist_models.system.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
COMMITS = [f"c{i}" for i in range(1, 10)]  # nine commits after GOOD ("c0")


def tight(estimate: float, rounds: int = 10) -> Ratio:
    return Ratio(estimate, estimate * 0.98, estimate * 1.02, rounds, 0.979)


def table(slowdown_of: dict[str, float], failing: tuple[str, ...] = ()):
    """compare(a, b, rounds) from each commit's cumulative slowdown over GOOD."""

    def total(commit: str) -> float:
        if commit == "c0":
            return 1.0
        index = COMMITS.index(commit)
        factor = 1.0
        for c in COMMITS[: index + 1]:
            factor *= slowdown_of.get(c, 1.0)
        return factor

    calls = []

    def compare(a: str, b: str, rounds: int) -> Ratio:
        calls.append((a, b, rounds))
        if b in failing:
            raise UsageError(f"the A/B worker for {b} failed to start: SyntaxError")
        return tight(total(b) / total(a), rounds)

    return compare, calls


def run(compare, threshold=0.05, rounds=10):
    return bisect("c0", "c9", COMMITS, compare, threshold, rounds, log=lambda line: None)


def test_one_slow_commit_is_named_with_its_ratio_against_its_parent():
    compare, calls = table({"c6": 1.15})
    result = run(compare)
    assert result.outcome == "found" and result.culprit == "c6"
    assert result.own.against == "c5" and result.own.ratio.estimate == pytest.approx(1.15)
    assert len(calls) <= 2 + 4  # BAD, log2(9) halvings, the culprit's own step
    assert "first slower commit: c6" in result.summary()


def test_no_slowdown_beyond_noise_ends_there():
    compare, calls = table({"c3": 1.02})  # 2%: below the threshold
    result = run(compare)
    assert result.outcome == "none" and len(calls) == 1
    assert result.summary().startswith("no commit slower beyond noise")


def test_two_small_steps_are_a_spread_slowdown():
    compare, _ = table({"c3": 1.06, "c7": 1.06})  # each below an 8% threshold, together 12%
    result = run(compare, threshold=0.08)
    assert result.outcome == "spread" and result.culprit == "c7"
    assert "spread over several commits" in result.summary()


def test_a_commit_that_does_not_run_is_skipped_and_named():
    compare, _ = table({"c6": 1.15}, failing=("c4",))
    result = run(compare)
    assert result.outcome == "found" and result.culprit == "c6" and result.skipped == ["c4"]
    # the parent of the slower commit does not run: it cannot be told which of the two was first, and it says so
    compare, _ = table({"c6": 1.15}, failing=("c5",))
    result = run(compare)
    assert result.outcome == "skipped" and result.left == ("c4", "c6") and result.skipped == ["c5"]
    assert "between c4 and c6" in result.summary() and "c5" in result.summary()


def test_an_undecided_step_is_measured_again_then_stops_saying_where():
    def compare(a, b, rounds):
        if b == "c9":
            return tight(1.20, rounds)
        return Ratio(1.2, 0.9, 1.5, rounds, 0.979)  # past the threshold, but the interval holds 1

    result = run(compare)
    assert result.outcome == "inconclusive" and result.left == ("c0", "c9")
    assert [s.ratio.rounds for s in result.steps[1:]] == [20]  # tried again with twice the rounds
    assert "inconclusive" in result.summary()


PLANTED_STEP = """
import time as _time

from . import plant as _plant


def _planted(make):
    def wrapper(*args, **kwargs):
        step = make(*args, **kwargs)

        def timed(x, y):
            started = _time.perf_counter()
            out = step(x, y)
            deadline = _time.perf_counter() + _plant.SHARE * (_time.perf_counter() - started)
            while _time.perf_counter() < deadline:  # busy, like real work: never a sleep
                pass
            return out

        return timed

    return wrapper


make_train_step = _planted(make_train_step)
"""


@pytest.mark.slow
def test_bisect_names_the_commit_that_made_the_step_25_percent_slower(tmp_path, history):
    repo = history.repo
    harness = repo / "mnist_models" / "core" / "harness.py"
    harness.write_text(harness.read_text() + PLANTED_STEP)
    plant = repo / "mnist_models" / "core" / "plant.py"
    plant.write_text("SHARE = 0.0\n")
    good = history.commit("good")
    # Two commits, the second slowed: BAD against GOOD, the first commit (same: the search goes right, not
    # left), the culprit against its parent. Three comparisons of two fresh worker pairs each (CI's time);
    # the table tests above cover longer histories.
    for i in (1, 2):
        (repo / "history.txt").write_text(f"{i}\n")
        if i == 2:
            plant.write_text("SHARE = 0.25\n")
        history.commit(f"commit {i}")
    culprit = history.git("rev-parse", "--short", "HEAD")
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path / "home")}
    # A 25% plant against a 10% threshold, 6 rounds of 6 steps (the gate's minimum): with a 15% plant, a 5%
    # threshold and 6 rounds, an unplanted commit was once called slower on this VM (1.051x, interval
    # 1.016-1.179) and sent the search the wrong way; 1.051x is well inside 10%.
    cmd = [sys.executable, "-m", "mnist_models", "bisect", good, "HEAD", "--repo", str(repo), "--threshold", "10%"]
    cmd += ["--rounds", "6", "--steps", "6", "--no-explain"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"first slower commit: {culprit}" in result.stdout, result.stdout[-3000:]
    reports = list((tmp_path / "home").rglob("bisect/*.md"))
    assert len(reports) == 1 and culprit in reports[0].read_text()
    assert history.git("worktree", "list").count("\n") == 0  # every worktree removed
