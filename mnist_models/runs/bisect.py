"""`mnist-bench bisect GOOD BAD`: which commit made the train step slower, decided beyond noise.

A bisection over the first-parent commits after GOOD up to BAD. Every step is an interleaved A/B of a
commit against GOOD through the same comparison as `mnist-bench ab --commits` (runs.ab.compare: both
sides in their own worktree's code, both start orders, the median ratio with its interval), and
every decision is a verdict beyond this machine's calibrated threshold:

- GOOD against BAD first: unless BAD is slower beyond noise, there is nothing to find ("no commit
  slower beyond noise");
- then halving: a midpoint slower than GOOD beyond noise bounds the search from above, one within
  noise (or faster) from below. A midpoint whose estimate passes the threshold but whose interval
  still holds 1 is measured again with twice the rounds; still undecided, the bisection stops and
  says where;
- a commit whose worker fails (it does not build, it crashes) is skipped and named, as with
  `git bisect skip`, and a neighbour is measured instead;
- the commit found is compared with its own parent: beyond the threshold, it is the culprit; within
  it, the slowdown is spread over several commits (each step small, their sum past the threshold).

The search is bounded in time (`max_seconds`): past it, it stops and names the range left. The
comparison is a parameter, so that the bisection's logic is tested with a table of ratios, and the
real one with commits in a small repository (tests/test_bisect.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.stats import Ratio
from ..system.errors import MnistBenchError, UsageError

DEFAULT_MAX_SECONDS = 1800


@dataclass
class Measured:
    """One comparison of the bisection: `commit` (B) against `against` (A)."""

    commit: str
    against: str
    ratio: Ratio | None
    verdict: str  # slower | within noise | faster | inconclusive | skipped
    note: str = ""

    def line(self) -> str:
        what = f"{self.ratio}" if self.ratio else self.note
        return f"{self.commit} against {self.against}: {what}: {self.verdict}"


@dataclass
class Bisection:
    good: str
    bad: str
    commits: list[str]  # first-parent commits after GOOD up to BAD, oldest first
    threshold: float
    steps: list[Measured] = field(default_factory=list)
    outcome: str = ""  # found | none | spread | inconclusive | skipped | timeout
    culprit: str | None = None
    own: Measured | None = None  # the culprit against its parent
    skipped: list[str] = field(default_factory=list)
    left: tuple[str, str] | None = None  # the range still open when the search stopped

    def summary(self) -> str:
        thr = f"{100 * self.threshold:.1f}%"
        if self.outcome == "none":
            total = self.steps[0]
            return f"no commit slower beyond noise: {self.bad} against {self.good} is {total.ratio} ({total.verdict}, threshold {thr})"
        if self.outcome == "found":
            return f"first slower commit: {self.culprit}, {self.own.ratio} its parent {self.own.against} (threshold {thr})"
        if self.outcome == "spread":
            own = self.own.ratio if self.own and self.own.ratio else "not measured"
            return (
                f"the slowdown is spread over several commits: {self.culprit} is the first whose total against {self.good} "
                f"passes the {thr} threshold, but its own step against its parent is {own}, within noise"
            )
        skipped = f"; skipped (their workers failed): {', '.join(self.skipped)}" if self.skipped else ""
        span = f"between {self.left[0]} and {self.left[1]}" if self.left else ""
        reasons = {
            "inconclusive": f"inconclusive: a step could not be decided even with twice the rounds; the first slower commit is {span}",
            "skipped": f"every commit left {span} failed to run: the first slower commit is among them",
            "timeout": f"stopped at the time bound; the first slower commit is {span}",
        }
        return reasons.get(self.outcome, self.outcome) + skipped


def first_parent_commits(good: str, bad: str, repo: Path) -> list[str]:
    """Short hashes of the first-parent commits after GOOD up to BAD, oldest first."""
    git = ["git", "-C", str(repo)]
    for rev in (good, bad):
        if subprocess.run([*git, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], capture_output=True).returncode:
            raise UsageError(f"no commit {rev!r} in {repo}")
    if subprocess.run([*git, "merge-base", "--is-ancestor", good, bad], capture_output=True).returncode:
        raise UsageError(f"{good} is not an ancestor of {bad}: bisect needs GOOD before BAD on one history")
    listed = subprocess.run(
        [*git, "rev-list", "--first-parent", "--reverse", "--abbrev-commit", f"{good}..{bad}"],
        capture_output=True,
        text=True,
        check=True,
    )
    commits = listed.stdout.split()
    if not commits:
        raise UsageError(f"{good} and {bad} are the same commit: nothing to bisect")
    return commits


def classify(ratio: Ratio, threshold: float) -> str:
    """slower / within noise / faster, or inconclusive: the estimate is past the threshold but the
    interval still holds 1 (more rounds may decide it)."""
    verdict = ratio.verdict(threshold)
    if verdict == "within noise" and ratio.estimate > 1 + threshold and ratio.low <= 1:
        return "inconclusive"
    return verdict


def bisect(
    good: str,
    bad: str,
    commits: list[str],
    compare: Callable[[str, str, int], Ratio],
    threshold: float,
    rounds: int,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    log: Callable[[str], None] = print,
) -> Bisection:
    """`compare(a, b, rounds)` gives b's time over a's; a MnistBenchError from it skips that commit."""
    result = Bisection(good, bad, commits, threshold)
    started = time.monotonic()

    def measure(commit: str, against: str) -> Measured:
        for attempt_rounds in (rounds, 2 * rounds):
            try:
                ratio = compare(against, commit, attempt_rounds)
            except MnistBenchError as exc:
                step = Measured(commit, against, None, "skipped", str(exc))
                break
            step = Measured(commit, against, ratio, classify(ratio, threshold))
            if step.verdict != "inconclusive":
                break
            log(f"  {step.line()}: measuring again with {2 * rounds} rounds")
        result.steps.append(step)
        log(f"  {step.line()}")
        return step

    total = measure(bad, good)
    if total.verdict == "skipped":
        raise UsageError(f"BAD ({bad}) cannot be measured: {total.note}")
    if total.verdict in ("within noise", "faster"):
        result.outcome = "none"
        return result
    if total.verdict == "inconclusive":
        result.outcome, result.left = "inconclusive", (good, bad)
        return result
    lo, hi = -1, len(commits) - 1  # commits[lo] (GOOD at -1) is not slower; commits[hi] is
    untried = set(range(len(commits) - 1))
    while hi - lo > 1:
        if time.monotonic() - started > max_seconds:
            result.outcome, result.left = "timeout", (commits[lo] if lo >= 0 else good, commits[hi])
            return result
        middle = (lo + hi) // 2
        candidates = sorted((i for i in untried if lo < i < hi), key=lambda i: (abs(i - middle), i))
        if not candidates:
            result.outcome, result.left = "skipped", (commits[lo] if lo >= 0 else good, commits[hi])
            return result
        mid = candidates[0]
        untried.discard(mid)
        step = measure(commits[mid], good)
        if step.verdict == "skipped":
            result.skipped.append(commits[mid])
        elif step.verdict == "slower":
            hi = mid
        elif step.verdict == "inconclusive":
            result.outcome, result.left = "inconclusive", (commits[lo] if lo >= 0 else good, commits[hi])
            return result
        else:
            lo = mid
    result.culprit = commits[hi]
    parent = commits[hi - 1] if hi > 0 else good
    own = result.own = measure(result.culprit, parent)
    result.outcome = "found" if own.verdict == "slower" else "spread"
    return result


def render(result: Bisection, machine: str, source: str, rounds: int, steps: int, model: str, spec: str) -> str:
    """The bisection as a report: the question, the answer, every step with its interval."""
    out = [
        f"# Bisect: {result.good}..{result.bad}\n",
        f"\nGenerated by `mnist-bench bisect {result.good} {result.bad}`; do not edit by hand. Machine: {machine}. "
        f"Benchmark: the {model} train step, `{spec}`, {rounds} interleaved rounds of {steps} steps per comparison. "
        f"Threshold {100 * result.threshold:.1f}% ({source}).\n",
        f"\n**{result.summary()}**\n",
        f"\n{len(result.commits)} first-parent commits after {result.good}: {', '.join(result.commits)}.\n",
        "\n| # | comparison | ratio (B / A) | verdict |\n|---:|---|---|---|\n",
    ]
    for i, step in enumerate(result.steps, 1):
        out.append(f"| {i} | {step.commit} against {step.against} | {step.ratio or step.note} | {step.verdict} |\n")
    return "".join(out)


def run_bisect(
    good: str,
    bad: str,
    repo: Path,
    model: str,
    spec: str,
    rounds: int,
    steps: int,
    threads: int | None = None,
    threshold: float | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    log: Callable[[str], None] = print,
) -> tuple[Bisection, Path]:
    """The bisection with real comparisons: one worktree per commit measured (kept until the end, so a
    commit compared twice is checked out once), the report in this machine's evidence folder."""
    import contextlib

    from ..system import atomic
    from ..system.machine import evidence_dir, machine_label, this_machine
    from .ab import Side, check_rounds, checkout_of, threshold_for
    from .ab import compare as compare_sides

    check_rounds(rounds, gate=True)  # a bisection decides: the same rounds as a gate
    commits = first_parent_commits(good, bad, repo)
    benchmark = Side("probe", model, spec).benchmark
    source = "--threshold"
    if threshold is None:
        threshold, source = threshold_for(benchmark)
    log(
        f"bisecting {len(commits)} first-parent commits after {good} up to {bad}: {benchmark}, threshold {100 * threshold:.1f}% ({source})"
    )
    with contextlib.ExitStack() as stack:
        trees: dict[str, Path] = {}

        def tree(rev: str) -> Path:
            if rev not in trees:
                trees[rev] = stack.enter_context(checkout_of(rev, repo))
            return trees[rev]

        def compare(a: str, b: str, n: int) -> Ratio:
            return compare_sides(Side(a, model, spec, tree(a), threads), Side(b, model, spec, tree(b), threads), n, steps)

        result = bisect(good, bad, commits, compare, threshold, rounds, max_seconds, log)
    text = render(result, machine_label(this_machine()), source, rounds, steps, model, spec)
    path = atomic.write_text(evidence_dir() / "bisect" / f"{good.replace('/', '_')}..{bad.replace('/', '_')}.md", text)
    return result, path
