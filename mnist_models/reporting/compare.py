"""Benchmark runs side by side: two commits or two machines, with the noise of each, a regression
gate, and the trend over a folder of runs.

Inputs are pytest-benchmark JSON files of any origin: the JSON written beside reports/benchmarks-*.md,
`--benchmark-json`, or `--benchmark-autosave` files (stored per machine under .benchmarks/).

Rows are matched by benchmark name, then by identity (core.bench_row): two rows of the same name
that measured different work (another dataset, thread count, batch ...) are listed as not
comparable, naming the fields that differ, and never form a ratio.

Noise: a difference is "beyond noise" when the interquartile ranges of the two runs' rounds do not
overlap (q3 of the faster below q1 of the slower). It is a plain, conservative test: rounds of one
benchmark are not independent draws, so a bootstrap interval would claim more certainty than the data
have. Same machine: medians are compared. Different machines: the report says so on top, and also
compares what transfers between machines: each benchmark's speedup over its group's eager fp32
baseline, and its share of its own machine's measured ceiling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ..core.bench_row import BenchRow, bench_rows
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import BUSY_CORES, evidence_dir, machine_key, machine_label
from .benchmarks import bench_machine, ceiling_share, group_baseline, load_bench_json
from .markdown import code, fmt_time, header, md, table


@dataclass
class Run:
    path: Path
    data: dict
    rows: dict[str, BenchRow]  # benchmark name -> row

    @property
    def machine(self) -> dict:
        return bench_machine(self.data)

    @property
    def key(self) -> str:
        return machine_key(self.machine)

    @property
    def label(self) -> str:
        return machine_label(self.machine)

    @property
    def busy(self) -> str | None:
        """Why this run's timings are not to be trusted, or None."""
        extra = self.data.get("mnist_bench") if isinstance(self.data.get("mnist_bench"), dict) else {}
        busy = extra.get("busy") if isinstance(extra.get("busy"), dict) else {}
        if busy.get("busy"):
            return f"the machine was busy ({busy.get('reason')})"
        others = extra.get("cores_used_by_others_during_run")
        if isinstance(others, (int, float)) and others > BUSY_CORES:
            return f"other processes used {others} cores during the run"
        if extra.get("partial"):
            return "the run is partial"
        return None

    def speedup(self, name: str) -> float | None:
        """Speedup of a benchmark over its group's eager fp32 baseline, within this run."""
        row = self.rows[name]
        base = group_baseline(row, list(self.rows.values()))
        return base.median / row.median if base else None

    def ceiling_share(self, name: str) -> float | None:
        """A benchmark's achieved GFLOP/s as a share of this run's own measured ceiling."""
        return ceiling_share(self.rows[name], list(self.rows.values()))


def load_run(path: Path) -> Run:
    data = load_bench_json(Path(path))
    rows = {r.name: r for r in bench_rows(data)}
    if not rows:
        raise UsageError(f"{path} holds no benchmark with timings")
    return Run(Path(path), data, rows)


def beyond_noise(a: BenchRow, b: BenchRow) -> bool:
    """Do the interquartile ranges of two benchmarks' rounds miss each other?"""
    (a1, a3), (b1, b3) = a.quartiles(), b.quartiles()
    return a3 < b1 or b3 < a1


@dataclass
class Change:
    name: str
    base: BenchRow
    new: BenchRow
    beyond_noise: bool

    @property
    def ratio(self) -> float:
        """New time over base time: above 1 is slower."""
        return self.new.median / self.base.median

    @property
    def gated(self) -> bool:
        """The ceiling suite times torch's own matmul and convolution, no code of this project: a slower
        one says the host was slower (seen here: the same fp32 matmul at 11 ms and at 25 ms on one
        box, the old commit as slow as the new), so it is shown, never failed."""
        return self.new.suite != "ceiling"

    def slower(self, threshold: float) -> bool:
        return self.beyond_noise and self.ratio > 1 + threshold

    def regression(self, threshold: float) -> bool:
        return self.gated and self.slower(threshold)


@dataclass
class NotComparable:
    """A benchmark of the same name in both runs that measured different work: no ratio is formed."""

    name: str
    base: BenchRow
    new: BenchRow

    @property
    def fields(self) -> list[str]:
        return self.base.identity.differences(self.new.identity)

    def describe(self) -> str:
        """'dataset mnist-5k → fashion-mnist, dataset_size 5000 → 60000'"""
        mine, theirs = self.base.identity.to_info(), self.new.identity.to_info()
        return ", ".join(f"{f} {mine[f]} → {theirs[f]}" for f in self.fields)


def compare(base: Run, new: Run) -> tuple[list[Change], list[NotComparable]]:
    """Rows of the same name and identity as changes; rows of the same name that differ in identity apart."""
    changes, apart = [], []
    for name in (n for n in base.rows if n in new.rows):
        a, b = base.rows[name], new.rows[name]
        if a.identity != b.identity:
            apart.append(NotComparable(name, a, b))
        else:
            changes.append(Change(name, a, b, beyond_noise(a, b)))
    return changes, apart


def _verdict(change: Change) -> str:
    if not change.beyond_noise:
        return "within noise"
    return f"**{'slower' if change.ratio > 1 else 'faster'}**"


def _pct(value: float | None) -> str:
    return f"{100 * value:.0f}%" if value is not None else "-"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _name(row: BenchRow) -> str:
    return row.label


def render(
    base: Run,
    new: Run,
    changes: list[Change],
    apart: list[NotComparable],
    threshold: float | None,
    command: str,
    png: Path | None,
) -> str:
    same = base.key == new.key
    title = "Benchmark comparison" + ("" if same else f": {base.key} vs {new.key} (two machines)")
    datasets = {r.identity.dataset for run in (base, new) for r in run.rows.values() if r.identity.dataset}
    out = [header(title, new.machine, datasets, command)]
    slower = [c for c in changes if c.beyond_noise and c.ratio > 1]
    faster = [c for c in changes if c.beyond_noise and c.ratio < 1]
    out.append(
        f"\n**Summary**: {len(changes)} compared; {len(faster)} faster and {len(slower)} slower beyond noise; "
        f"{len(changes) - len(faster) - len(slower)} within noise"
        + (f"; {len(apart)} not comparable (different work under the same name, below)" if apart else "")
        + ".\n"
    )
    out.append(f"\n- **Base**: {code(base.path.name)} on {md(base.label)} ({md(base.data.get('datetime', '?'))[:16]})\n")
    out.append(f"- **New**: {code(new.path.name)} on {md(new.label)} ({md(new.data.get('datetime', '?'))[:16]})\n")
    for run, what in ((base, "base"), (new, "new")):
        if run.busy:
            out.append(f"- **WARNING**: in the {what} run {md(run.busy)}: its times are upper bounds\n")
    if not same:
        out.append(
            "\n**Different machines**: raw time ratios mix the code with the hardware. The speedup over each group's "
            "eager fp32 baseline and the share of each machine's own ceiling transfer between machines; compare those.\n"
        )
    out.append(
        "\nRatio = new median / base median (above 1: slower). *Beyond noise* when the two runs' interquartile ranges "
        "do not overlap."
        + (
            f" The gate fails on a benchmark slower beyond noise by more than {100 * threshold:.0f}%."
            if threshold is not None
            else ""
        )
        + "\n\n"
    )
    rows = []
    for c in sorted(changes, key=lambda c: -c.ratio):
        row = [
            code(_name(c.new)),
            md(c.base.group),
            fmt_time(c.base.median),
            fmt_time(c.new.median),
            f"{c.ratio:.2f}",
            _verdict(c),
        ]
        if not same:
            row += [
                f"{_x(base.speedup(c.name))} → {_x(new.speedup(c.name))}",
                f"{_pct(base.ceiling_share(c.name))} → {_pct(new.ceiling_share(c.name))}",
            ]
        if threshold is not None:
            row.append("FAIL" if c.regression(threshold) else "slower (host; not gated)" if c.slower(threshold) else "")
        rows.append(row)
    columns = ["benchmark", "group", "base", "new", "ratio", "difference"]
    columns += ["speedup vs eager fp32", "% of own ceiling"] if not same else []
    columns += ["gate"] if threshold is not None else []
    out.append(table(columns, rows, align="ll" + "r" * 4 + "l" + "r" * (len(columns) - 7)))
    if apart:
        out.append(
            "\n### Not comparable\n\nThese benchmarks share a name but measured different work; no ratio is formed "
            "and the gate does not judge them.\n\n"
        )
        out.append(
            table(
                ["benchmark", "differs in", "base", "new"],
                [[code(_name(a.base)), md(a.describe()), fmt_time(a.base.median), fmt_time(a.new.median)] for a in apart],
                align="llrr",
            )
        )
    only = sorted(set(base.rows) ^ set(new.rows))
    if only:
        out.append(f"\n{len(only)} benchmarks are in one run only and are not compared.\n")
    if png is not None:
        out.append(f"\n![ratios]({png.name})\n")
    return "".join(out)


def plot_ratios(changes: list[Change], path: Path) -> Path:
    """One bar per benchmark: new / base median, whiskers from the quartile ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    changes = sorted(changes, key=lambda c: c.ratio)
    fig, ax = plt.subplots(figsize=(9, max(3, 0.28 * len(changes) + 1)))
    ys = range(len(changes))
    lows = [c.ratio - c.new.quartiles()[0] / c.base.quartiles()[1] for c in changes]
    highs = [c.new.quartiles()[1] / c.base.quartiles()[0] - c.ratio for c in changes]
    colours = ["tab:red" if c.beyond_noise and c.ratio > 1 else "tab:green" if c.beyond_noise else "tab:grey" for c in changes]
    ax.barh(list(ys), [c.ratio - 1 for c in changes], left=1, color=colours, xerr=[lows, highs], capsize=2)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), [_name(c.new) for c in changes], fontsize=6)
    ax.set_xlabel("new / base median time (whiskers: quartile ratios; red slower, green faster beyond noise)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic.write_bytes(path, buffer.getvalue())


BASELINE = "baseline.json"  # in a machine's evidence folder: the quick benchmark subset the gate compares with


def pick_baseline(machines_dir: Path, new: Run) -> Path | None:
    """The committed baseline for the new run's machine: <machines_dir>/<machine key>/baseline.json."""
    path = evidence_dir(new.machine, Path(machines_dir)) / BASELINE
    return path if path.is_file() else None


def trend(runs: list[Run]) -> str:
    """Median per benchmark over runs in time order (e.g. a machine's history folder). A line follows one
    benchmark on one machine with one identity: a run that measured other work under the same name,
    or ran elsewhere, starts its own line, so "last / first" never crosses them. A change is marked
    only where the first and last runs' interquartile ranges miss each other (beyond noise)."""
    runs = sorted(runs, key=lambda r: r.data.get("datetime", ""))
    lines: dict[tuple, list[BenchRow | None]] = {}
    for i, run in enumerate(runs):
        for row in run.rows.values():
            lines.setdefault((row.name, run.key, row.identity), [None] * len(runs))[i] = row
    several = len({r.key for r in runs}) > 1
    columns = ["benchmark", *(["machine"] if several else []), *[f"{i + 1}" for i in range(len(runs))], "last / first"]
    rows = []
    for (_, key, identity), found in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        present = [r for r in found if r is not None]
        change = "-"
        if len(present) > 1:
            first, last = present[0], present[-1]
            change = f"{last.median / first.median:.2f}"
            if beyond_noise(first, last):
                change += f" **{'slower' if last.median > first.median else 'faster'}**"
        rows.append(
            [
                code(f"{identity.suite} {identity.label()}"),
                *([md(key)] if several else []),
                *[fmt_time(r.median if r else None) for r in found],
                change,
            ]
        )
    legend = "\n".join(
        f"{i + 1}. {code(r.path.name)}: {md(r.data.get('datetime', '?'))[:16]}, {md(r.label)}" for i, r in enumerate(runs)
    )
    return "## Trend\n\n" + legend + "\n\n" + table(columns, rows)
