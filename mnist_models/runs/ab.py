"""Interleaved A/B comparisons on one machine: two variants, two commits, or the same code against
itself (A/A), and the per-machine calibration that turns A/A noise into a gate threshold.

Each side is its own process (ab_worker: one warmed-up train step, timed in blocks on request), so
two commits run their own code and neither side inherits the other's allocator or thread state. The
two processes are kept for the whole comparison and asked for a block each, in alternating order
(A B, B A, ...): a round's two blocks see the same machine, and drift cancels in their ratio
(core.stats.paired_ratio gives the median ratio and its bootstrap interval). Idle workers wait
passively (OMP_WAIT_POLICY=PASSIVE), so the side not being timed does not spin on the cores.

Calibration (`mnist-bench calibrate`) runs, on this machine, A/A comparisons (no difference: how
often is one flagged?) and A/B comparisons with a planted slowdown of B (is it caught?). Its
threshold is the largest A/A effect seen; the gate flags a comparison whose interval lies above 1
and whose estimate exceeds that threshold. The result is stored with the machine's evidence
(reports/machines/<machine>/noise.json), per benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..core.stats import Ratio, paired_ratio
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import evidence_dir, machine_info
from ..system.paths import SOURCE_ROOT

WORKER = Path(__file__).with_name("ab_worker.py")
DEFAULT_ROUNDS = 10
DEFAULT_STEPS = 15  # steps per block: a block is their trimmed mean
# A block's figure is the mean of its middle steps (ab_worker.trimmed_mean), not their median: a cost
# paid every other step (glibc's malloc faulting a step's freed memory back in, system/allocator.py)
# is half of a block's steps, which a median can skip and an epoch pays in full; trimming keeps a
# rare hiccup out (a plain mean made the A/A noise twice the median's on the Zen 3).
BLOCK_STATISTIC = "trimmed_mean"
DEFAULT_THRESHOLD = 0.05  # without a calibration of this machine
READY_TIMEOUT_S = 120.0  # start-up and warm-up of one worker (torch import, build, 5 steps)
BLOCK_TIMEOUT_S = 120.0
NOISE_FILE = "noise.json"


@dataclass(frozen=True)
class Side:
    """What one side runs: a net's train step with a variant spec, from a checkout (this one by default)."""

    label: str
    model: str = "simple"
    spec: str = "eager-fp32"
    source: Path = SOURCE_ROOT
    threads: int | None = None
    slowdown: float = 0.0  # a planted regression: every step stretched by this share of its time

    @property
    def benchmark(self) -> str:
        return f"train-step {self.model} b100 {self.spec}"


class Worker:
    """One side's process; `block(n)` times n steps there and returns their trimmed mean."""

    def __init__(self, side: Side) -> None:
        self.side = side
        argv = ["--model", side.model, "--spec", side.spec, "--slowdown", str(side.slowdown)]
        argv += ["--threads", str(side.threads)] if side.threads else []
        code = f"import runpy, sys; sys.argv = ['ab_worker'] + {argv!r}; runpy.run_path({str(WORKER)!r}, run_name='__main__')"
        env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(side.source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=side.source,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        """Block until the worker has built its net and warmed up (workers start side by side)."""
        self._read(READY_TIMEOUT_S, "start")

    def _read(self, timeout: float, what: str) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            err = (self.proc.stderr.read() or "").strip().splitlines()
            reason = err[-1] if err else f"no answer within {timeout:.0f} s"
            raise UsageError(f"the A/B worker for {self.side.label} failed to {what}: {reason}")
        return json.loads(line)

    def block(self, steps: int) -> float:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return float(self._read(BLOCK_TIMEOUT_S, "time a block")[f"{BLOCK_STATISTIC}_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def workers(*sides: Side) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for side in sides:
            started.append(Worker(side))
        for worker in started:  # start-ups overlap (import, data, warm-up): nothing is timed before all are ready
            worker.wait_ready()
        yield started
    finally:
        for w in started:
            w.close()


def rounds_of(a: Worker, b: Worker, rounds: int, steps: int) -> list[tuple[float, float]]:
    """`rounds` paired blocks, the order alternating (A B, B A, ...): [(a, b), ...]."""
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            first = a.block(steps)
            pairs.append((first, b.block(steps)))
        else:
            second = b.block(steps)
            pairs.append((a.block(steps), second))
    return pairs


def compare(a: Side, b: Side, rounds: int = DEFAULT_ROUNDS, steps: int = DEFAULT_STEPS) -> Ratio:
    """B's time over A's, interleaved, with its interval."""
    with workers(a, b) as (wa, wb):
        return paired_ratio(rounds_of(wa, wb, rounds, steps))


@contextlib.contextmanager
def checkout_of(revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` of this checkout, removed afterwards."""
    git = ["git", "-C", str(SOURCE_ROOT)]
    found = subprocess.run([*git, "rev-parse", "--verify", f"{revision}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        raise UsageError(f"no commit {revision!r} in {SOURCE_ROOT} (a shallow clone may lack it: git fetch --unshallow)")
    folder = Path(tempfile.mkdtemp(prefix="mnist-bench-ab-")) / revision.replace("/", "_").replace("~", "-")
    subprocess.run([*git, "worktree", "add", "--detach", str(folder), found.stdout.strip()], capture_output=True, check=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], capture_output=True)


# --- calibration -----------------------------------------------------------------------------


@dataclass
class Calibration:
    benchmark: str
    slowdown: float
    rounds: int
    steps: int
    aa: list[Ratio] = field(default_factory=list)
    planted: list[Ratio] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def threshold(self) -> float:
        """The largest effect an A/A comparison showed here (at least 1%): a difference below it is noise."""
        return max([0.01, *(abs(r.estimate - 1) for r in self.aa)])

    def flagged(self, ratios: list[Ratio]) -> int:
        return sum(r.slower_than(self.threshold) for r in ratios)

    def summary(self) -> str:
        return (
            f"{self.benchmark}: A/A flagged {self.flagged(self.aa)}/{len(self.aa)}, a planted {100 * self.slowdown:.0f}% "
            f"slowdown flagged {self.flagged(self.planted)}/{len(self.planted)}, threshold {100 * self.threshold:.1f}% "
            f"({self.rounds} rounds of {self.steps} steps each, {self.seconds:.0f} s)"
        )

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "threshold": self.threshold,
            "slowdown": self.slowdown,
            "rounds": self.rounds,
            "steps": self.steps,
            "block_statistic": BLOCK_STATISTIC,
            "seconds": self.seconds,
            "aa": [r.to_json() for r in self.aa],
            "planted": [r.to_json() for r in self.planted],
            "aa_flagged": self.flagged(self.aa),
            "planted_flagged": self.flagged(self.planted),
        }


def calibrate(
    side: Side,
    runs: int = 10,
    rounds: int = DEFAULT_ROUNDS,
    steps: int = DEFAULT_STEPS,
    slowdown: float = 0.10,
    log: Callable[[str], None] = print,
) -> Calibration:
    """`runs` A/A comparisons of `side` with itself and as many against a planted `slowdown`, the three
    processes kept for the whole calibration and the comparisons alternated."""
    started = time.perf_counter()
    result = Calibration(side.benchmark, slowdown, rounds, steps)
    again = Side(f"{side.label} (again)", side.model, side.spec, side.source, side.threads)
    slowed = Side(f"{side.label} +{100 * slowdown:.0f}%", side.model, side.spec, side.source, side.threads, slowdown)
    with workers(side, again, slowed) as (a, a2, planted):
        for run in range(runs):
            result.aa.append(paired_ratio(rounds_of(a, a2, rounds, steps)))
            result.planted.append(paired_ratio(rounds_of(a, planted, rounds, steps)))
            log(f"  run {run + 1}/{runs}: A/A {result.aa[-1]}; planted {result.planted[-1]}")
    result.seconds = time.perf_counter() - started
    return result


def noise_path(machines_dir: Path | None = None) -> Path:
    return evidence_dir(None, machines_dir) / NOISE_FILE


def save_calibration(result: Calibration, machines_dir: Path | None = None) -> Path:
    """Add (or replace) one benchmark's calibration in this machine's noise.json."""
    path = noise_path(machines_dir)
    data = load_noise(path) or {"kind": "mnist-bench calibrate", "benchmarks": {}}
    data["machine"] = machine_info()
    entry = result.to_json() | {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": data["machine"]["code"],
    }
    old = data["benchmarks"].get(result.benchmark)
    if old:  # a calibration asked for again replaces the threshold; the earlier one stays, under "previous"
        entry["previous"] = [*old.pop("previous", []), old]
    data["benchmarks"][result.benchmark] = entry
    return atomic.write_json(path, data)


def load_noise(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("benchmarks"), dict) else None


def threshold_for(benchmark: str, machines_dir: Path | None = None) -> tuple[float, str]:
    """The gate's threshold for a benchmark on this machine, and where it comes from."""
    data = load_noise(noise_path(machines_dir))
    entry = (data or {}).get("benchmarks", {}).get(benchmark)
    if entry and isinstance(entry.get("threshold"), (int, float)):
        if entry.get("block_statistic", "median") != BLOCK_STATISTIC:  # calibrated before blocks were trimmed means
            return DEFAULT_THRESHOLD, (
                f"the default: this machine's calibration timed blocks by their {entry.get('block_statistic', 'median')}, "
                f"comparisons now by their {BLOCK_STATISTIC.replace('_', ' ')} (mnist-bench calibrate again)"
            )
        return float(entry["threshold"]), f"this machine's calibration ({entry.get('created', '?')})"
    return DEFAULT_THRESHOLD, "the default: no calibration of this benchmark on this machine (mnist-bench calibrate)"
