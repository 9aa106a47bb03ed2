"""Interleaved A/B comparisons: the paired-ratio statistics, the engine's two processes, commits
from worktrees, and the per-machine calibration."""

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_models.core.stats import paired_ratio

ROOT = Path(__file__).resolve().parent.parent


def rounds(ratio: float, n: int = 10, drift: float = 0.4, noise: float = 0.01, seed: int = 1):
    """Paired times whose B/A is `ratio`, on a machine drifting by up to `drift` between rounds."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        base = 0.030 * (1 + drift * rng.random())  # the machine's speed this round: both sides see it
        out.append((base * (1 + noise * rng.gauss(0, 1)), base * ratio * (1 + noise * rng.gauss(0, 1))))
    return out


def test_pairing_by_round_cancels_drift_and_the_interval_says_so():
    slower = paired_ratio(rounds(1.10))
    assert slower.estimate == pytest.approx(1.10, abs=0.02) and slower.low > 1.05 and slower.excludes_one()
    assert slower.verdict(0.05) == "slower" and slower.verdict(0.15) == "within noise"  # beyond noise, not beyond 15%
    same = paired_ratio(rounds(1.0))
    assert same.low < 1 < same.high and same.verdict(0.0) == "within noise"
    # Unpaired, the 40% drift would swamp a 10% difference; paired it does not.
    assert paired_ratio(rounds(1.10)) == slower  # seeded: one set of rounds, one interval
    with pytest.raises(ValueError):
        paired_ratio([(0.0, 1.0)])


def ab(*args, env=None):
    cmd = [sys.executable, "-m", "mnist_models", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ | (env or {}))


def test_a_bad_side_is_one_line():
    result = ab("ab", "--a", "eager-fp32", "--b", "eager-fp33")
    assert result.returncode == 2 and "unknown token 'fp33'" in result.stderr and "Traceback" not in result.stderr
    result = ab("ab", "--a", "eager-fp32")
    assert result.returncode == 2 and "--b SPEC (two variants) or --commits A B" in result.stderr


@pytest.mark.slow
def test_two_commits_are_compared_interleaved_at_the_level_their_rounds_give(tmp_path):
    """One real comparison (each costs two fresh pairs of workers, ~15 s): two worktrees of one commit,
    a spec other than the default so the workers parse it. The gate's real decisions run in
    test_bisect.py and in CI's gate; here its refusal below 6 rounds."""
    before = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    result = ab("ab", "--commits", "HEAD", "HEAD", "--a", "eager-fp32-cl", "--rounds", "4", "--steps", "3", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "A: HEAD eager-fp32-cl" in result.stdout and "B: HEAD eager-fp32-cl" in result.stdout
    # 4 rounds: the interval is their range, at the level it has; the command says so before it starts
    assert "B / A = " in result.stdout and "range of 4 rounds, 87.5%" in result.stdout and "95%" not in result.stdout
    assert "warning: 4 rounds give an interval that is the range of 4 rounds, 87.5%" in result.stderr
    after = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # the worktrees are gone again
    result = ab("ab", "--commits", "HEAD", "HEAD", "--rounds", "2", "--steps", "2", "--threads", "1", "--gate")
    assert result.returncode == 2 and "a gate needs at least 6 rounds" in result.stderr  # no verdict at 50%
    result = ab("ab", "--commits", "HEAD", "no-such-revision", "--rounds", "2")
    assert result.returncode == 2 and "no commit 'no-such-revision'" in result.stderr


def test_calibration_sets_its_threshold_on_one_set_and_scores_it_on_another(tmp_path, monkeypatch, capsys):
    """The comparisons are a table here (the real ones are what test_two_commits_are_compared... runs): what is
    checked is what calibrate does with them, and what it stores."""
    from mnist_models import cli
    from mnist_models.core.stats import Ratio
    from mnist_models.runs import ab

    monkeypatch.setenv("MNIST_BENCH_HOME", str(tmp_path))
    monkeypatch.setattr(ab, "noise_path", lambda machines_dir=None: tmp_path / "noise.json")
    aa = iter([1.03, 0.99, 1.045, 1.01, 0.97])  # setting runs first in each run, then held out
    seen = []

    def compare(a, b, rounds, steps):
        seen.append((a.label, b.label, b.slowdown))
        if b.slowdown:
            return Ratio(1 + 0.8 * b.slowdown, 1 + 0.5 * b.slowdown, 1 + 2 * b.slowdown, rounds, 0.969)
        estimate = next(aa)
        return Ratio(estimate, estimate - 0.02, estimate + 0.02, rounds, 0.969)

    monkeypatch.setattr(ab, "compare", compare)
    assert cli.main(["calibrate", "--rounds", "3"]) == 2 and "at least 6 rounds" in capsys.readouterr().err
    argv = ["calibrate", "--runs", "2", "--held-out", "3", "--plants", "5%", "20%", "--rounds", "6", "--steps", "2"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "noise.json").read_text())["benchmarks"]["train-step simple b100 eager-fp32"]
    setting = [r["estimate"] for r in entry["aa_setting"]]
    held_out = [r["estimate"] for r in entry["aa_held_out"]]
    assert setting == [1.03, 1.045] and held_out == [0.99, 1.01, 0.97]  # interleaved run by run, never the same runs
    assert entry["threshold"] == pytest.approx(0.045)  # the largest effect of the setting runs only
    assert entry["held_out_false_alarms"] == 0 and entry["protocol"] == "held-out"
    assert entry["detection"] == {"0.05": 0.0, "0.20": 1.0} and entry["minimum_detectable_effect"] == pytest.approx(0.20)
    assert all(r["level"] == pytest.approx(0.969) for r in entry["aa_held_out"])
    assert ("eager-fp32", "eager-fp32 +20%", 0.2) in seen  # a plant is a slowdown of the B side's own steps
    out = capsys.readouterr().out
    assert "held-out A/A runs flagged 0/3" in out and "minimum detectable effect 20%" in out
    threshold, source = ab.threshold_for("train-step simple b100 eager-fp32")
    assert threshold == pytest.approx(0.045) and "held-out A/A flagged 0/3" in source


def test_a_calibration_of_block_medians_is_not_applied_to_trimmed_means(tmp_path):
    """Blocks became trimmed means (a cost paid every other step counts); a threshold measured on medians
    says nothing of their noise, so the default applies until the machine is calibrated again."""
    from mnist_models.runs.ab import DEFAULT_THRESHOLD, noise_path, threshold_for
    from mnist_models.system import atomic

    bench = "train-step simple b100 eager-fp32"
    path = noise_path(tmp_path)
    atomic.write_json(path, {"benchmarks": {bench: {"threshold": 0.021, "created": "then"}}})  # before: no statistic
    threshold, source = threshold_for(bench, tmp_path)
    assert threshold == DEFAULT_THRESHOLD and "timed blocks by their median" in source
    atomic.write_json(path, {"benchmarks": {bench: {"threshold": 0.021, "created": "now", "block_statistic": "trimmed_mean"}}})
    threshold, source = threshold_for(bench, tmp_path)
    assert threshold == 0.021 and "made before held-out scoring" in source  # applied, with its unmeasured false alarms said


def test_a_corrupt_calibration_is_an_error_not_no_calibration(tmp_path):
    from mnist_models.runs.ab import Calibration, noise_path, save_calibration, threshold_for
    from mnist_models.system.errors import UsageError

    path = noise_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"benchmarks": {"train-step')  # a writer killed mid-file (by another tool: ours are atomic)
    with pytest.raises(UsageError, match="not a calibration this version can read"):
        threshold_for("train-step simple b100 eager-fp32", tmp_path)
    with pytest.raises(UsageError, match="move it aside"):
        save_calibration(Calibration("train-step simple b100 eager-fp32", 6, 2), tmp_path)
    assert path.read_text() == '{"benchmarks": {"train-step'  # nothing written over it


def test_a_comparison_runs_both_start_orders(monkeypatch):
    """The worker started second ran 1.5-3% slower on a Zen 4 whichever side it held: each comparison
    starts A's worker first for half its rounds and B's first for the other half."""
    from mnist_models.runs import ab

    starts = []

    class Fake:
        def __init__(self, side):
            self.side = side

        def block(self, steps):
            return 1.0 if self.side.label == "A" else 1.1

    @contextlib.contextmanager
    def fake_workers(*sides):
        starts.append([s.label for s in sides])
        yield [Fake(s) for s in sides]

    monkeypatch.setattr(ab, "workers", fake_workers)
    pairs = ab.compare_pairs(ab.Side("A"), ab.Side("B"), rounds=7, steps=1)
    assert starts == [["A", "B"], ["B", "A"]] and pairs == [(1.0, 1.1)] * 7
