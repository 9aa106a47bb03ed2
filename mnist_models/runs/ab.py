"""Interleaved A/B comparisons on one machine: two variants, two commits, or the same code against
itself (A/A), and the per-machine calibration that turns A/A noise into a gate threshold.

Each side is its own process (ab_worker: one warmed-up train step, timed in blocks on request), so
two commits run their own code and neither side inherits the other's allocator or thread state.
Blocks are asked for in alternating order (core.interleave: A B, B A, ...): a round's two blocks see
the same machine, and drift cancels in their ratio (core.stats.paired_ratio: the median ratio and
its order-statistic interval at the level it has). Idle workers wait passively
(OMP_WAIT_POLICY=PASSIVE), so the side not being timed does not spin on the cores.

Which process starts first matters: on a 2-core Zen 4 the worker started second ran 1.5-3% slower
in every one of six A/A comparisons, whichever side it held (docs/benchmarks.md). A comparison
therefore runs in two halves, each with a fresh pair of workers, A's started first in one half and
B's in the other, so that the start order's effect cancels in the median instead of leaning every
verdict one way.

Calibration (`mnist-bench calibrate`) runs, on this machine, A/A comparisons in two sets: the first
sets the threshold (the largest A/A effect seen), the second, held out, counts false alarms at that
threshold. Planted slowdowns of 5, 10 and 20% (busy-waits, core/blocks.py) measure the detection
rate and the minimum detectable effect. The result is stored with the machine's evidence
(reports/machines/<machine>/noise.json), per benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ..core.blocks import BLOCK_STATISTIC
from ..core.interleave import alternate
from ..core.stats import MIN_ROUNDS_FOR_LEVEL, Ratio, format_level, median_ranks, paired_ratio
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import evidence_dir, machine_info
from ..system.paths import SOURCE_ROOT

WORKER = Path(__file__).with_name("ab_worker.py")
DEFAULT_ROUNDS = 10
# A decision (--gate, bisect) takes twice the rounds: on the Zen 4, a commit whose train step busy-waits
# 10% of its time was caught in 7 of 10 comparisons at 10 rounds and 10 of 10 at 20 (the k-th order
# statistic of 20 rounds is far steadier than the 2nd of 10); reports/machines/<zen4>/ab/ holds both.
GATE_ROUNDS = 20
DEFAULT_STEPS = 15  # steps per block: a block is their trimmed mean (core/blocks.py says why)
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
            alive = self.proc.poll() is None
            self.close()
            err = (self.proc.stderr.read() or "").strip().splitlines()
            if err:
                reason = err[-1]
            elif alive:
                reason = f"no answer within {timeout:.0f} s"
            else:
                reason = f"it ended with status {self.proc.returncode}"
            raise UsageError(f"the A/B worker for {self.side.label} failed to {what}: {reason}")
        try:
            return json.loads(line)
        except ValueError:
            self.close()
            raise UsageError(f"the A/B worker for {self.side.label} answered {line.strip()[:80]!r}, not a timing") from None

    def block(self, steps: int) -> float:
        try:
            self.proc.stdin.write(f"{steps}\n")
            self.proc.stdin.flush()
        except OSError:  # BrokenPipeError: the worker died (killed, out of memory) between two blocks
            self.close()
            err = (self.proc.stderr.read() or "").strip().splitlines()
            reason = err[-1] if err else f"it ended with status {self.proc.returncode}"
            raise UsageError(f"the A/B worker for {self.side.label} died: {reason}; nothing was compared") from None
        return float(self._read(BLOCK_TIMEOUT_S, "time a block")[f"{BLOCK_STATISTIC}_s"])

    def profile(self, steps: int) -> dict:
        """{"ops": per op its name, input shapes, self microseconds and calls per step; "wall_ms": a step's
        wall time}, over `steps` profiled steps."""
        try:
            self.proc.stdin.write(f"profile {steps}\n")
            self.proc.stdin.flush()
        except OSError:
            self.close()
            raise UsageError(f"the A/B worker for {self.side.label} died; nothing was profiled") from None
        return self._read(BLOCK_TIMEOUT_S, "profile a block")

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
    """One worker per side, started in the order given; every one ended on the way out (Ctrl-C too)."""
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


def compare_pairs(a: Side, b: Side, rounds: int = DEFAULT_ROUNDS, steps: int = DEFAULT_STEPS) -> list[tuple[float, float]]:
    """The rounds of one comparison: the first half with A's worker started first, the second half with
    a fresh pair, B's started first (the start order's effect cancels); within each half the order of
    the blocks alternates."""
    first = rounds // 2 + rounds % 2
    with workers(a, b) as (wa, wb):
        pairs = alternate(lambda: wa.block(steps), lambda: wb.block(steps), first)
    if rounds - first:
        with workers(b, a) as (wb, wa):
            pairs += alternate(lambda: wa.block(steps), lambda: wb.block(steps), rounds - first, start_with_a=False)
    return pairs


def compare(a: Side, b: Side, rounds: int = DEFAULT_ROUNDS, steps: int = DEFAULT_STEPS) -> Ratio:
    """B's time over A's, interleaved, with its interval."""
    return paired_ratio(compare_pairs(a, b, rounds, steps))


def decide(a: Side, b: Side, rounds: int, steps: int, threshold: float, confirm: bool, log: Callable[[str], None] = print) -> str:
    """One comparison's verdict (faster, slower, same) at `threshold`, each comparison logged. With
    `confirm` (a gate that fails a build) a "slower" must be found twice in a row, by a second
    comparison of fresh workers: a false alarm twice running is the square of its rate."""
    ratio = compare(a, b, rounds, steps)
    verdict = ratio.verdict(threshold)
    log(f"B / A = {ratio}: {verdict}")
    if not (confirm and verdict == "slower"):
        return verdict
    log("slower: confirming with a second comparison")
    again = compare(a, b, rounds, steps)
    log(f"B / A = {again}: {again.verdict(threshold)}")
    if again.verdict(threshold) != "slower":
        return "same"  # not confirmed: no verdict a build may fail on
    return "slower"


@contextlib.contextmanager
def checkout_of(revision: str, repo: Path = SOURCE_ROOT) -> Iterator[Path]:
    """A detached git worktree of `revision` of `repo` (this checkout by default), removed afterwards."""
    git = ["git", "-C", str(repo)]
    found = subprocess.run([*git, "rev-parse", "--verify", f"{revision}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        raise UsageError(f"no commit {revision!r} in {repo} (a shallow clone may lack it: git fetch --unshallow)")
    parent = Path(tempfile.mkdtemp(prefix="mnist-bench-ab-"))
    folder = parent / revision.replace("/", "_").replace("~", "-")
    subprocess.run([*git, "worktree", "add", "--detach", str(folder), found.stdout.strip()], capture_output=True, check=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)  # the temporary folder that held it, too


# --- calibration -----------------------------------------------------------------------------

PLANTS = (0.05, 0.10, 0.20)  # planted slowdowns whose detection rate calibrate measures
DETECTED = 0.9  # the minimum detectable effect: the smallest plant flagged in at least this share of runs


@dataclass
class Calibration:
    """A/A comparisons that set the threshold, held-out A/A comparisons that score it, and planted
    slowdowns (share -> comparisons) that measure what it catches."""

    benchmark: str
    rounds: int
    steps: int
    setting: list[Ratio] = field(default_factory=list)
    held_out: list[Ratio] = field(default_factory=list)
    planted: dict[float, list[Ratio]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def threshold(self) -> float:
        """The largest effect an A/A comparison of the setting set showed (at least 1%)."""
        return max([0.01, *(abs(r.estimate - 1) for r in self.setting)])

    def flagged(self, ratios: list[Ratio]) -> int:
        return sum(r.slower_than(self.threshold) for r in ratios)

    def false_alarms(self) -> int:
        """Held-out A/A comparisons called slower or faster: runs the threshold was not set from."""
        return sum(r.verdict(self.threshold) != "within noise" for r in self.held_out)

    def detection(self) -> dict[float, float]:
        return {share: self.flagged(ratios) / len(ratios) for share, ratios in sorted(self.planted.items()) if ratios}

    def minimum_detectable(self) -> float | None:
        """The smallest plant flagged in >= 90% of its runs (None: none was)."""
        caught = [share for share, rate in self.detection().items() if rate >= DETECTED]
        return min(caught) if caught else None

    def summary(self) -> str:
        detected = ", ".join(
            f"{100 * share:.0f}% {self.flagged(self.planted[share])}/{len(self.planted[share])}" for share in sorted(self.planted)
        )
        mde = self.minimum_detectable()
        return (
            f"{self.benchmark}: threshold {100 * self.threshold:.1f}% (set from {len(self.setting)} A/A runs); "
            f"held-out A/A runs flagged {self.false_alarms()}/{len(self.held_out)}; planted slowdowns flagged: {detected}; "
            f"minimum detectable effect {'above the largest plant' if mde is None else f'{100 * mde:.0f}%'} "
            f"({self.rounds} rounds of {self.steps} steps each, {self.seconds:.0f} s)"
        )

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "threshold": self.threshold,
            "rounds": self.rounds,
            "steps": self.steps,
            "block_statistic": BLOCK_STATISTIC,
            "protocol": "held-out",
            "seconds": self.seconds,
            "aa_setting": [r.to_json() for r in self.setting],
            "aa_held_out": [r.to_json() for r in self.held_out],
            "held_out_false_alarms": self.false_alarms(),
            "planted": {f"{share:.2f}": [r.to_json() for r in ratios] for share, ratios in sorted(self.planted.items())},
            "detection": {f"{share:.2f}": rate for share, rate in self.detection().items()},
            "minimum_detectable_effect": self.minimum_detectable(),
        }


def calibrate(
    side: Side,
    runs: int = 10,
    rounds: int = DEFAULT_ROUNDS,
    steps: int = DEFAULT_STEPS,
    plants: tuple[float, ...] = PLANTS,
    held_out: int | None = None,
    log: Callable[[str], None] = print,
) -> Calibration:
    """`runs` A/A comparisons that set the threshold, `held_out` (default `runs`) more that score it, and
    `runs` comparisons against each planted slowdown, every one through `compare` (fresh workers, both
    start orders). The kinds are interleaved run by run, so that drift over the calibration's minutes
    touches each alike."""
    started = time.perf_counter()
    result = Calibration(side.benchmark, rounds, steps, planted={share: [] for share in plants})
    again = replace(side, label=f"{side.label} (again)")
    held_out = runs if held_out is None else held_out
    for run in range(max(runs, held_out)):
        line = []
        if run < runs:
            result.setting.append(compare(side, again, rounds, steps))
            line.append(f"A/A (setting) {result.setting[-1]}")
        if run < held_out:
            result.held_out.append(compare(side, again, rounds, steps))
            line.append(f"A/A (held out) {result.held_out[-1]}")
        if run < runs:
            for share in plants:
                slowed = replace(side, label=f"{side.label} +{100 * share:.0f}%", slowdown=share)
                result.planted[share].append(compare(side, slowed, rounds, steps))
                line.append(f"+{100 * share:.0f}% {result.planted[share][-1]}")
        log(f"  run {run + 1}/{max(runs, held_out)}: " + "; ".join(line))
    result.seconds = time.perf_counter() - started
    return result


def noise_path(machines_dir: Path | None = None) -> Path:
    return evidence_dir(None, machines_dir) / NOISE_FILE


def save_calibration(result: Calibration, machines_dir: Path | None = None) -> Path:
    """Add (or replace) one benchmark's calibration in this machine's noise.json."""
    path = noise_path(machines_dir)
    data = load_noise(path)
    if data is None and path.exists():  # never write over a file this version cannot read: it may be someone's evidence
        raise UsageError(f"{path} is not a calibration this version can read: move it aside, then calibrate again")
    data = data or {"kind": "mnist-bench calibrate", "benchmarks": {}}
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
    path = noise_path(machines_dir)
    data = load_noise(path)
    if data is None and path.exists():
        raise UsageError(
            f"{path} is not a calibration this version can read (corrupt, or from another tool): move it aside or calibrate again"
        )
    entry = (data or {}).get("benchmarks", {}).get(benchmark)
    if entry and isinstance(entry.get("threshold"), (int, float)):
        if entry.get("block_statistic", "median") != BLOCK_STATISTIC:  # calibrated before blocks were trimmed means
            return DEFAULT_THRESHOLD, (
                f"the default: this machine's calibration timed blocks by their {entry.get('block_statistic', 'median')}, "
                f"comparisons now by their {BLOCK_STATISTIC.replace('_', ' ')} (mnist-bench calibrate again)"
            )
        if entry.get("protocol") != "held-out":
            return float(entry["threshold"]), (
                f"this machine's calibration ({entry.get('created', '?')}; made before held-out scoring and both start "
                "orders: its false-alarm rate is unmeasured, mnist-bench calibrate again)"
            )
        return float(entry["threshold"]), (
            f"this machine's calibration ({entry.get('created', '?')}: held-out A/A flagged "
            f"{entry.get('held_out_false_alarms')}/{len(entry.get('aa_held_out', []))})"
        )
    return DEFAULT_THRESHOLD, "the default: no calibration of this benchmark on this machine (mnist-bench calibrate)"


def check_rounds(rounds: int, gate: bool) -> str | None:
    """Too few rounds for an interval at 95%: a gate refuses (a UsageError), a comparison warns (the line
    returned). With fewer than MIN_ROUNDS_FOR_LEVEL rounds the interval is the rounds' whole range."""
    if rounds >= MIN_ROUNDS_FOR_LEVEL:
        return None
    if rounds < 2:
        raise UsageError(f"--rounds {rounds}: a comparison needs at least 2 rounds ({MIN_ROUNDS_FOR_LEVEL} for a 95% interval)")
    level = f"range of {rounds} rounds, {format_level(median_ranks(rounds)[1])}"
    if gate:
        raise UsageError(
            f"--rounds {rounds}: a gate needs at least {MIN_ROUNDS_FOR_LEVEL} rounds (with {rounds} its interval is the {level})"
        )
    return f"warning: {rounds} rounds give an interval that is the {level}: use --rounds {MIN_ROUNDS_FOR_LEVEL} or more for 95%"
