"""The commands that compare: ab, calibrate, bisect, explain (interleaved A/B workers) and compare (saved benchmark runs)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..core.variants import Variant, parse_tag
from ..system.errors import UsageError
from ..system.paths import REPORTS_DIR
from . import flags


def _ab_parser(sub) -> None:
    p = sub.add_parser(
        "ab",
        help="compare two variants or two commits by interleaving them on this machine, with an interval",
        description="Time the train step of two sides in alternating rounds (A B, B A, ...), each side in its own process, "
        "and print B's time over A's with the order-statistic interval of the median ratio over rounds, at the level it has "
        "(96.9%% or more from 6 rounds; fewer rounds give their whole range, at a lower level it prints). Sides: two variant specs (--a, --b) or "
        "one spec at two commits (--commits A B, each run from a git worktree). Run it alone on the machine.",
    )
    p.add_argument("--a", default="eager-fp32", help="side A's switches as a spec, e.g. eager-fp32-cl (default: eager-fp32)")
    p.add_argument("--b", default=None, help="side B's switches as a spec (or use --commits)")
    p.add_argument(
        "--commits", nargs=2, metavar=("A", "B"), default=None, help="two git revisions of this checkout, both with --a's spec"
    )
    p.add_argument(
        "--threshold",
        type=flags.percent,
        default=None,
        help="a difference smaller than this is noise (default: this machine's calibration, else 5%%)",
    )
    p.add_argument(
        "--gate",
        action="store_true",
        help="exit 1 when B is slower than A beyond noise and the threshold, in two comparisons running (the second confirms)",
    )
    flags.ab_common(p)
    p.set_defaults(func=cmd_ab)


def cmd_ab(args: argparse.Namespace) -> int:
    """Two variants or two commits, interleaved; with --gate, exit 1 when B is slower beyond noise."""
    from ..runs.ab import DEFAULT_ROUNDS, GATE_ROUNDS, check_rounds, checkout_of, decide, threshold_for

    if bool(args.commits) == bool(args.b):
        raise UsageError("give --b SPEC (two variants) or --commits A B (two commits), one of the two")
    if args.rounds is None:
        args.rounds = GATE_ROUNDS if args.gate else DEFAULT_ROUNDS
    warning = check_rounds(args.rounds, args.gate)
    if warning:
        print(warning, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.commits:
            sources = [stack.enter_context(checkout_of(rev)) for rev in args.commits]
            a = flags.ab_side(args, f"{args.commits[0]} {args.a}", args.a, sources[0])
            b = flags.ab_side(args, f"{args.commits[1]} {args.a}", args.a, sources[1])
        else:
            a, b = flags.ab_side(args, args.a, args.a), flags.ab_side(args, args.b, args.b)
        threshold, source = (args.threshold, "--threshold") if args.threshold is not None else threshold_for(a.benchmark)
        print(f"A: {a.label}\nB: {b.label}\n{args.rounds} interleaved rounds of {args.steps} {args.model} train steps each")
        print(f"threshold {100 * threshold:.1f}%, from {source}")
        if decide(a, b, args.rounds, args.steps, threshold, confirm=args.gate) == "slower" and args.gate:
            print("mnist-bench: regression: B is slower than A beyond noise, twice in a row", file=sys.stderr)
            return 1
    return 0


def _calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this machine's noise: A/A comparisons, held-out A/A runs and planted slowdowns; stores the gate's threshold",
        description="Run A/A comparisons of one train step against itself: the first set sets the threshold (their largest "
        "effect), a second, held-out set counts the false alarms at that threshold. Then comparisons against planted "
        "slowdowns (a busy-wait of that share of each step) give the detection rate of each and the minimum detectable "
        "effect. Stored in reports/machines/<machine>/noise.json for mnist-bench ab and the gate. Run it alone on the "
        "machine; each comparison takes about 20 s.",
    )
    p.add_argument("--spec", default="eager-fp32", help="the variant's switches as a spec (default: eager-fp32)")
    p.add_argument(
        "--runs",
        type=flags.positive_int,
        default=10,
        help="A/A comparisons that set the threshold, and runs of each plant (default: 10)",
    )
    p.add_argument(
        "--held-out", type=flags.positive_int, default=None, help="held-out A/A comparisons that score it (default: --runs)"
    )
    p.add_argument(
        "--plants",
        type=flags.percent,
        nargs="+",
        default=[0.05, 0.10, 0.20],
        help="planted slowdowns whose detection is measured (default: 5%% 10%% 20%%)",
    )
    flags.ab_common(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..runs.ab import DEFAULT_ROUNDS, calibrate, check_rounds, save_calibration

    args.rounds = args.rounds or DEFAULT_ROUNDS  # the comparisons ab makes by default; a gate's 20 are steadier still
    check_rounds(args.rounds, gate=True)
    side = flags.ab_side(args, args.spec, args.spec)
    held_out = args.runs if args.held_out is None else args.held_out
    plants = ", ".join(f"+{100 * share:.0f}%" for share in args.plants)
    print(
        f"calibrating {side.benchmark}: {args.runs} A/A runs set the threshold, {held_out} held-out A/A runs score it, "
        f"{args.runs} runs of each planted slowdown ({plants}) measure what it catches"
    )
    result = calibrate(side, args.runs, args.rounds, args.steps, tuple(args.plants), held_out)
    path = save_calibration(result)
    print(result.summary())
    print(f"stored in {path}")
    return 0


def _bisect_parser(sub) -> None:
    from ..runs.bisect import DEFAULT_MAX_SECONDS

    p = sub.add_parser(
        "bisect",
        help="find the commit that made the train step slower: a bisection of interleaved A/Bs, decided beyond noise",
        description="Bisect the first-parent commits after GOOD up to BAD. Each step compares a commit with GOOD as "
        "mnist-bench ab --commits does (interleaved, both start orders) and decides only beyond this machine's "
        "calibrated threshold with the interval excluding 1. It names the first slower commit with its ratio against its "
        "parent, or says that GOOD and BAD do not differ beyond noise, that the slowdown is spread over several commits, "
        "or where it stopped (an undecided step, commits that do not run, the time bound). The steps go to "
        "reports/machines/<machine>/bisect/. Run it alone on the machine.",
    )
    p.add_argument("good", help="a commit known to be fast")
    p.add_argument("bad", help="a later commit known (or feared) to be slower")
    p.add_argument("--a", default="eager-fp32", help="the variant spec both sides run (default: eager-fp32)")
    p.add_argument("--repo", default=None, help="the git repository (default: this checkout)")
    p.add_argument(
        "--threshold", type=flags.percent, default=None, help="the threshold (default: this machine's calibration, else 5%%)"
    )
    p.add_argument(
        "--max-seconds",
        type=flags.positive_int,
        default=DEFAULT_MAX_SECONDS,
        help=f"stop the search after this long and name the range left (default: {DEFAULT_MAX_SECONDS})",
    )
    p.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="do not profile the commit found against its parent (default: mnist-bench explain runs on it, about a minute)",
    )
    flags.ab_common(p)
    p.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    """Which first-parent commit made the train step slower; exit 1 when it could not be decided."""
    from ..runs.ab import GATE_ROUNDS
    from ..runs.bisect import run_bisect
    from ..system.paths import SOURCE_ROOT

    parse_tag(args.a, Variant.SWITCHES)  # a bad spec is one line before any worktree
    args.rounds = args.rounds or GATE_ROUNDS  # every step decides, as a gate does
    result, path = run_bisect(
        args.good,
        args.bad,
        Path(args.repo) if args.repo else SOURCE_ROOT,
        args.model,
        args.a,
        args.rounds,
        args.steps,
        args.threads,
        args.threshold,
        args.max_seconds,
    )
    print(result.summary())
    print(f"report: {path}")
    if result.outcome == "found" and args.explain:
        from ..profiling.explain import DEFAULT_ROUNDS, DEFAULT_STEPS, run_explain

        parent = result.own.against
        explained, where = run_explain(
            parent,
            result.culprit,
            args.model,
            args.a,
            DEFAULT_ROUNDS,
            DEFAULT_STEPS,
            args.threads,
            Path(args.repo or SOURCE_ROOT),
        )
        print(f"where {result.culprit} is slower than {parent}: {explained.summary()} (report: {where})")
    return 0 if result.outcome in ("found", "none", "spread") else 1


def _explain_parser(sub) -> None:
    from ..profiling.explain import DEFAULT_ROUNDS as EXPLAIN_ROUNDS
    from ..profiling.explain import DEFAULT_STEPS as EXPLAIN_STEPS

    p = sub.add_parser(
        "explain",
        help="where in the train step B is slower than A: layers (forward, backward) and ops, each with its interval",
        description="Profile two sides in alternating rounds (two variant specs, or two commits each running --a's spec) "
        "and attribute the difference of the step to the net's layers, forward and backward, and to the ops under them: "
        "per layer the median difference over rounds with its interval, the layers slower beyond noise named first, and "
        "the roof each layer sits under on each side. The report goes to reports/machines/<machine>/explain/.",
    )
    p.add_argument("a_side", metavar="A", help="a commit, or a variant spec (e.g. eager-fp32)")
    p.add_argument("b_side", metavar="B", help="a commit, or a variant spec (e.g. eager-fp32-cl)")
    p.add_argument("--a", default="eager-fp32", help="with two commits: the variant spec both run (default: eager-fp32)")
    p.add_argument("--repo", default=None, help="the git repository of the commits (default: this checkout)")
    flags.ab_common(p, EXPLAIN_ROUNDS, EXPLAIN_STEPS, f"alternating rounds of profiled blocks (default: {EXPLAIN_ROUNDS})")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    """Where in the step B differs from A: layers and ops, each with its interval."""
    from ..profiling.explain import run_explain
    from ..runs.ab import check_rounds
    from ..system.paths import SOURCE_ROOT

    check_rounds(args.rounds, gate=True)
    result, path = run_explain(
        args.a_side, args.b_side, args.model, args.a, args.rounds, args.steps, args.threads, Path(args.repo or SOURCE_ROOT)
    )
    print(result.summary())
    print(f"report: {path}")
    return 0


def _compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="benchmark runs side by side with their noise; a regression gate; a trend over a folder",
        description="Compare pytest-benchmark JSON files (the report's JSON, --benchmark-json or autosave files): per "
        "benchmark in both, the medians, their ratio and whether the difference is beyond the runs' noise (interquartile "
        "ranges that do not overlap). Runs from different machines also compare speedups and shares of each machine's own "
        "ceiling. One folder gives a trend table over the runs in it.",
    )
    p.add_argument(
        "files", nargs="+", metavar="JSON", help="BASE.json NEW.json [MORE.json ...] (each compared with BASE), or one folder"
    )
    p.add_argument(
        "--out",
        default=str(REPORTS_DIR / "compare.md"),
        help=f"markdown output; PNG plots beside it (default: {REPORTS_DIR / 'compare.md'})",
    )
    p.add_argument(
        "--fail-above",
        type=flags.percent,
        default=None,
        help="gate: exit 1 when a benchmark is slower beyond noise by more than this, e.g. 10%% (default: no gate)",
    )
    p.add_argument(
        "--baselines",
        default=None,
        help="the folder of per-machine evidence (e.g. reports/machines): compare NEW with <folder>/<its machine>/baseline.json; "
        "skip (exit 0, saying why) when there is none or the machine was busy (default: none)",
    )
    p.add_argument("--no-plot", action="store_true", help="no PNG, markdown only")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs side by side (or a trend over a folder); with --fail-above, a regression gate."""
    from ..reporting.gate import compare_and_gate

    return compare_and_gate(
        [Path(p) for p in args.files],
        Path(args.out),
        fail_above=args.fail_above,
        baselines=Path(args.baselines) if args.baselines else None,
        plot=not args.no_plot,
        warn=lambda line: print(line, file=sys.stderr),
    )


def register(sub) -> None:
    """Add this module's commands to the `mnist-bench` parser."""
    _ab_parser(sub)
    _calibrate_parser(sub)
    _bisect_parser(sub)
    _explain_parser(sub)
    _compare_parser(sub)
