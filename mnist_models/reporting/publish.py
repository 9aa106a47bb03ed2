"""Every markdown report `mnist-bench report` renders, from stored data only: the benchmark report of a
saved pytest-benchmark JSON, a machine's conv-kernel report, the accuracy-vs-cost report of every
machine's runs, each machine's time-to-accuracy report and tune report, the index of all machines and the
README's results table (the same evidence as the index, so it is never typed by hand)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.bench_row import bench_rows, skipped_rows
from ..system.atomic import write_text
from ..system.errors import UsageError
from ..system.paths import MACHINES_DIR, REPORTS_DIR
from .benchmarks import load_bench_json, write_report


def publish(
    bench_json: str | None = None,
    bench_out: str | None = None,
    kernels: str | None = None,
    accuracy: bool = True,
    runs_dir: str | None = None,
    out: str | None = None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> None:
    """`mnist-bench report`: a benchmark report re-rendered from its JSON (bench_json -> bench_out), a
    machine's kernel report (kernels: its folder), and (accuracy) the accuracy-vs-cost report of every
    machine's runs, with each machine's time-to-accuracy and tune reports, the index and the README's table."""
    out = out or str(REPORTS_DIR / "accuracy-vs-cost.md")

    bench = load_bench_json(Path(bench_json)) if bench_json else None
    if bench is not None and not bench_rows(bench):  # an empty report is no report
        unread = skipped_rows(bench)
        raise UsageError(
            f"{bench_json} holds no benchmark row this version can read ({unread} entries without a usable timing or "
            "identity: a newer schema, or a run whose benchmarks were all disabled)"
        )
    if bench is not None and bench_out:
        write_report(bench, Path(bench_out), command=_rerender_command(bench, bench_json))
        log(f"benchmark report written to {bench_out}")
    if kernels:
        from ..profiling.profiler import load_summaries
        from .kernels import write_kernel_report

        folder = Path(kernels)
        command = f"mnist-bench report --kernels {kernels} (summaries of mnist-bench profile runs)"
        write_kernel_report(folder / "conv-kernels.md", load_summaries(folder / "kernels"), command)
        log(f"kernel report written to {folder / 'conv-kernels.md'}")
    if not accuracy:
        return
    from ..runs.records import RunStore
    from ..system.machine import machine_key
    from .accuracy import render
    from .benchmarks import bench_machine

    # Every machine's records by default (accuracy pools over them; costs stay per machine).
    roots = [Path(runs_dir)] if runs_dir else sorted(MACHINES_DIR.glob("*/runs"))
    if not roots:
        raise UsageError(f"no run records under {MACHINES_DIR}; train or sweep first (mnist-bench sweep --help)")
    runs, problems = [], []
    for root in roots:
        found, trouble = RunStore(root).load_all()
        runs += found
        problems += trouble
    for problem in problems:
        warn(f"warning: {problem}")
    if not runs:
        raise UsageError(f"no valid run records under {', '.join(map(str, roots))}; train or sweep first")
    # Each machine's latencies come from its own benchmark JSON (a --bench-json serves its machine only).
    benches = {}
    for path in sorted(MACHINES_DIR.glob("*/benchmarks-*.json")):
        with contextlib.suppress(UsageError):
            data = load_bench_json(path)
            benches.setdefault(machine_key(bench_machine(data)), data)
    if bench is not None:
        benches[machine_key(bench_machine(bench))] = bench
    out = Path(out)
    write_text(out, render(runs, problems, benches, out.parent, command="mnist-bench report"))
    log(f"accuracy-vs-cost report written to {out} ({len(runs)} runs)")
    _write_tta_reports(runs, out, log)
    if out.resolve().parent == REPORTS_DIR.resolve() and MACHINES_DIR.is_dir():  # the summary of all machines
        from .index import render_index

        _rerender_tune_reports(log, warn)
        write_text(REPORTS_DIR / "index.md", render_index(REPORTS_DIR, MACHINES_DIR))
        log(f"index of every machine's reports written to {REPORTS_DIR / 'index.md'}")
        _refresh_readme_results(log)


def _write_tta_reports(runs: list, out: Path, log: Callable[[str], None]) -> None:
    """Each machine's time-to-accuracy report, from its own records (rendering needs no machine: every
    figure is in the records): in each evidence folder beside the summary of all machines; else only
    this machine's, beside `out`."""
    from ..system.machine import machine_info, machine_key
    from .tta import write_report

    if out.resolve().parent == REPORTS_DIR.resolve():
        keys = sorted({r.machine_key for r in runs})
        folders = {key: MACHINES_DIR / key for key in keys}
    else:
        folders = {machine_key(machine_info()): out.parent}
    for key, folder in folders.items():
        path = write_report(folder / "time-to-accuracy.md", [r for r in runs if r.machine_key == key], runs, "mnist-bench report")
        if path is not None:
            log(f"time-to-accuracy report of {key} written to {path}")


def _rerender_tune_reports(log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Every machine's tune.md from its tune.json, in this version's words (an older run's intervals,
    printed as 95% at any n, are named for what they are)."""
    from ..runs.tune import rerender_saved
    from ..system.machine import git_commit

    code = git_commit()
    for path in sorted(MACHINES_DIR.glob("*/tune.json")):
        try:
            log(f"tune report re-rendered: {rerender_saved(path, code)}")
        except (OSError, ValueError, KeyError, TypeError, UsageError) as exc:
            warn(f"warning: {path} could not be re-rendered ({type(exc).__name__}: {exc}); its tune.md is left as it was")


def _rerender_command(bench: dict, path: str) -> str:
    """How a re-rendered benchmark report came about: this command, and the one that timed it."""
    timed = (bench.get("mnist_bench") or {}).get("command") if isinstance(bench.get("mnist_bench"), dict) else None
    return f"mnist-bench report --bench-json {path}" + (f"` from a run of `{timed}" if timed else "")


def _refresh_readme_results(log: Callable[[str], None]) -> None:
    """The README beside the reports folder (the checkout's, with an editable install) carries a results
    table generated from the same evidence as the index: rewritten here, so it is never stale."""
    from ..system.atomic import write_text
    from .index import results_table, with_results

    readme = REPORTS_DIR.parent / "README.md"
    try:
        text = readme.read_text()
    except OSError:
        return
    updated = with_results(text, results_table(MACHINES_DIR, "reports/machines"))
    if updated is not None and updated != text:
        write_text(readme, updated)
        log(f"results table in {readme} re-rendered")
