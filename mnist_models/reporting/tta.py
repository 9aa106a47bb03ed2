"""Run records of one machine -> its time-to-accuracy.md and a plot per dataset, MLPerf Training's way.

A run's time to accuracy is the wall time from the start of training (the data loaded and the net
built: that set-up is shown apart) to the end of the first evaluation that reaches its net's target
(core/targets.py), the evaluations included. Runs to a target (`--to-target`) stop there; a run of
the whole budget gives the same figure from its per-epoch record. A recipe x variant is scored over
its seeds by the olympic mean (drop the fastest and the slowest; a run that never reached the target
counts as the slowest, and more than one such run leaves no score), as MLPerf does, with the spread
and the failures shown, never dropped. Speedups are against the seed's recipe on the seed's pipeline
on the same machine, with an interval over both sides' seeds at the level it has.

The targets themselves come from the seed recipe's final accuracy, pooled over every machine's
records (accuracy does not depend on the machine), one run per seed.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..core.recipes import SEED_RECIPE, Recipe
from ..core.stats import format_level, olympic_mean, permutation_p, ratio_interval
from ..core.targets import TARGETS, target_for
from ..runs.records import RunRecord
from ..system import atomic
from ..system.machine import machine_label
from .markdown import code, fmt_num, header, table

MIN_RUNS_FOR_SCORE = 5  # MLPerf's least number of runs for a score


@dataclass
class TtaGroup:
    """One recipe x implementation variant of one net on one dataset and machine: a run per seed."""

    dataset: str
    model: str
    recipe: Recipe
    tag: str  # the implementation variant, loader first (seed-eager-fp32 is the seed's pipeline)
    device: str
    threads: int
    ranks: int
    runs: list[RunRecord]

    @property
    def target(self) -> float:
        return target_for(self.dataset, self.model).accuracy

    @cached_property  # the runs never change once grouped
    def reached(self) -> list[tuple[float, int]]:
        """(seconds, epoch) of each run that reached the target."""
        return [hit for hit in (r.time_to(self.target) for r in self.runs) if hit is not None]

    @property
    def times(self) -> list[float]:
        return [seconds for seconds, _ in self.reached]

    @property
    def failures(self) -> int:
        return len(self.runs) - len(self.reached)

    @property
    def score(self) -> float | None:
        return olympic_mean(self.times, self.failures)

    @property
    def is_seed_baseline(self) -> bool:
        return self.device == "cpu" and self.runs[0].key.is_seed_way()  # the group's runs share their key's fields

    @property
    def label(self) -> str:
        ranks = f" x{self.ranks} ranks" if self.ranks > 1 else ""
        device = f" {self.device}" if self.device != "cpu" else ""
        return f"{self.model} {self.recipe.spec} {self.tag}{device} t{self.threads}{ranks}"

    def setup_seconds(self) -> float | None:
        values = [r.setup_seconds for r in self.runs if r.setup_seconds is not None]
        return statistics.median(values) if values else None


def tta_groups(runs: list[RunRecord]) -> list[TtaGroup]:
    """One machine's records that can give a time to accuracy, grouped; one run per seed (the newest)."""
    by_group: dict[tuple, dict[int, RunRecord]] = defaultdict(dict)
    for r in runs:
        if (r.dataset.name, r.config.model) not in TARGETS or not r.timed_to_accuracy:
            continue
        k = r.key
        group = (k.dataset, k.model, k.recipe, k.spec, k.variant.device, k.threads, k.ranks)
        kept = by_group[group].get(k.seed)
        if kept is None or r.created > kept.created:
            by_group[group][k.seed] = r
    groups = [TtaGroup(*g, runs=sorted(seeds.values(), key=lambda r: r.key.seed)) for g, seeds in by_group.items()]
    return sorted(groups, key=lambda g: (g.dataset, g.model, g.score is None, g.score or 0.0, g.label))


def seed_recipe_finals(runs: list[RunRecord], dataset: str, model: str) -> dict[int, RunRecord]:
    """The seed recipe's full-budget runs in fp32, one per seed, from every machine: its final accuracy is
    the recipe's (the implementations compute the same function). The seed's pipeline is preferred, then
    the oldest record."""
    chosen: dict[int, RunRecord] = {}
    for r in sorted(runs, key=lambda r: (r.config.loader != "seed", r.created)):
        k = r.key
        if (
            k.dataset == dataset
            and k.model == model
            and k.recipe == SEED_RECIPE
            and k.target is None
            and k.ranks == 1
            and k.variant.precision == "fp32"
            and len(r.epochs) == k.epochs
        ):
            chosen.setdefault(k.seed, r)
    return dict(sorted(chosen.items()))


def _targets_section(all_runs: list[RunRecord], dataset: str) -> list[str]:
    lines = [
        "| net | target | where it comes from | seed recipe's final accuracy here: mean (n, seeds, machines) |",
        "|---|---|---|---|",
    ]
    finals: dict[str, list[float]] = {}
    for model in ("simple", "deep"):
        if (dataset, model) not in TARGETS:
            continue
        target = TARGETS[(dataset, model)]
        chosen = seed_recipe_finals(all_runs, dataset, model)
        finals[model] = [r.test_accuracy for r in chosen.values()]
        machines = sorted({r.machine_key for r in chosen.values()})
        measured = (
            f"{statistics.fmean(finals[model]):.4f} (n={len(chosen)}, seeds {', '.join(map(str, chosen))}; {len(machines)} "
            f"machine{'s' if len(machines) != 1 else ''})"
            if chosen
            else "-"
        )
        lines.append(f"| {model} | {target.accuracy:.2%} | {target.source} | {measured} |")
    lines.append("")
    a, b = finals.get("deep", []), finals.get("simple", [])
    if len(a) >= 2 and len(b) >= 2:
        p = permutation_p(a, b)
        gap = statistics.fmean(a) - statistics.fmean(b)
        verdict = "a real difference" if p < 0.05 else "not distinguishable from seed-to-seed noise"
        lines.append(
            f"Deep against simple, the seed recipe's final accuracy: {gap:+.4f} (deep {statistics.fmean(a):.4f}, n={len(a)}; "
            f"simple {statistics.fmean(b):.4f}, n={len(b)}); exact two-sided permutation test of the means: p = {p:.3f}, "
            f"{verdict} at the 5% level."
        )
        lines.append("")
    return lines


def _speedup(group: TtaGroup, baseline: TtaGroup | None) -> str:
    if baseline is None or group is baseline or group.score is None or baseline.score is None:
        return "-"
    interval = ratio_interval(baseline.times, group.times, baseline.failures, group.failures)
    spread = f" ({interval[0]:.2f}-{interval[1]:.2f}, {format_level(interval[2])})" if interval else ""
    return f"{baseline.score / group.score:.2f}x{spread}"


def _row(group: TtaGroup, baseline: TtaGroup | None) -> list[str]:
    times, epochs = group.times, [epoch for _, epoch in group.reached]
    score = group.score
    shown = fmt_num(score) if score is not None else "-"
    if score is not None and len(group.runs) < MIN_RUNS_FOR_SCORE:
        shown += f" (n<{MIN_RUNS_FOR_SCORE})"
    contended = sum(r.contended for r in group.runs)
    return [
        group.model,
        code(group.recipe.spec) + (" (seed's)" if group.recipe == SEED_RECIPE else ""),
        code(group.tag) + (f" {group.device}" if group.device != "cpu" else ""),
        str(group.threads),
        str(len(group.runs)),
        f"{len(times)}/{len(group.runs)}" + (f" ({group.failures} never)" if group.failures else ""),
        shown,
        f"{min(times):.1f}-{max(times):.1f}" if times else "-",
        fmt_num(statistics.median(epochs), 0) if epochs else "-",
        fmt_num(group.setup_seconds()),
        _speedup(group, baseline),
        str(contended) if contended else "",
    ]


def baseline_of(groups: list[TtaGroup], dataset: str, model: str) -> TtaGroup | None:
    """The seed recipe on the seed pipeline for this net (the most runs, if several thread counts)."""
    candidates = [g for g in groups if g.dataset == dataset and g.model == model and g.is_seed_baseline]
    return max(candidates, key=lambda g: len(g.runs), default=None)


def fastest(groups: list[TtaGroup], dataset: str, model: str) -> TtaGroup | None:
    scored = [g for g in groups if g.dataset == dataset and g.model == model and g.score is not None]
    return min(scored, key=lambda g: g.score, default=None)


def render(runs: list[RunRecord], all_runs: list[RunRecord], out_dir: Path, command: str) -> str | None:
    """The report of one machine's runs (None when none can give a time to accuracy)."""
    groups = tta_groups(runs)
    if not groups:
        return None
    machine = groups[0].runs[0].machine
    datasets = sorted({g.dataset for g in groups})
    parts = [
        header("Time to accuracy", machine, datasets, command),
        "Wall time from the start of training to the end of the first evaluation that reaches the net's target, the "
        "evaluations included; loading the data and building the net (set-up) is apart. Scored over seeds by MLPerf's "
        "olympic mean (the fastest and the slowest run dropped; a run that never reached the target counts as the "
        f"slowest, and more than one leaves no score); MLPerf asks for at least {MIN_RUNS_FOR_SCORE} runs. Speedups are "
        "against the seed's recipe on the seed's pipeline (`e15-b100-lr0.001-const`, `seed-eager-fp32`) on this machine; "
        "their interval bounds the ratio of the two sides' typical times from the Mann-Whitney statistic's exact "
        "distribution over both sides' seeds (runs are not paired), at the level printed beside it. Times are this "
        "machine's only.",
        "",
    ]
    for dataset in datasets:
        parts += [f"## {dataset}", "", "### Targets", ""]
        parts += _targets_section(all_runs, dataset)
        parts += ["### Time to target", ""]
        rows, verdicts = [], []
        for model in ("simple", "deep"):
            mine = [g for g in groups if g.dataset == dataset and g.model == model]
            if not mine:
                continue
            baseline = baseline_of(groups, dataset, model)
            rows += [_row(g, baseline) for g in mine]
            best = fastest(groups, dataset, model)
            if best is not None:
                verdicts.append(_verdict(best, baseline))
        parts += [f"- {v}" for v in verdicts] + [""]
        parts.append(
            table(
                [
                    "net",
                    "recipe",
                    "variant",
                    "threads",
                    "runs",
                    "reached",
                    "olympic mean s",
                    "spread s (reached)",
                    "epochs to target (median)",
                    "set-up s",
                    "speedup vs seed recipe on seed pipeline",
                    "contended runs",
                ],
                rows,
            )
        )
        picture = plot(groups, dataset, machine_label(machine), out_dir / f"time-to-accuracy-{dataset}.png")
        parts += ["", f"![test accuracy against wall time]({picture.name})", ""]
    parts.append(
        "Contended runs shared the CPU with another process (their times are upper bounds). Recipes: "
        "`e<epochs>-b<batch>-lr<peak rate>-<schedule>` (docs/training.md); the epochs are the budget."
    )
    return "\n".join(parts) + "\n"


def verdicts(runs: list[RunRecord]) -> list[str]:
    """One machine's answer per dataset and net: the fastest recipe x variant to the target, against the seed's."""
    groups = tta_groups(runs)
    lines = []
    for dataset in sorted({g.dataset for g in groups}):
        for model in ("simple", "deep"):
            best = fastest(groups, dataset, model)
            if best is not None:
                lines.append(f"{dataset}, {_verdict(best, baseline_of(groups, dataset, model))}")
    return lines


def _verdict(best: TtaGroup, baseline: TtaGroup | None) -> str:
    reached = f"{best.model}: fastest to {best.target:.0%} is {code(best.recipe.spec)} {code(best.tag)}, {best.score:.1f} s"
    if baseline is None:
        return reached + " (no seed-recipe seed-pipeline runs here to compare with)"
    if baseline is best:
        return reached + " (the seed recipe on the seed pipeline itself)"
    return reached + f", {_speedup(best, baseline)} the seed recipe on the seed pipeline ({fmt_num(baseline.score)} s)"


def plot(groups: list[TtaGroup], dataset: str, machine: str, path: Path) -> Path:
    """Test accuracy against wall time since training started: per net, the seed baseline and the fastest
    group, the median over seeds at each epoch with a min-max band, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = [m for m in ("simple", "deep") if any(g.dataset == dataset and g.model == m for g in groups)]
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        baseline, best = baseline_of(groups, dataset, model), fastest(groups, dataset, model)
        for group in [g for g in (baseline, best if best is not baseline else None) if g is not None]:
            xs, mid, low, high = _curve(group)
            line = ax.plot(xs, mid, marker="o", markersize=3, label=f"{group.label} (n={len(group.runs)})")[0]
            ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
        ax.axhline(target_for(dataset, model).accuracy, linestyle="--", color="black", linewidth=1, label="target")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}" if str(x)[0] in "25" else ""))
        ax.set_xlabel("wall time since training started, s (log; evaluations included)")
        ax.set_ylabel("test accuracy (median over seeds; band: min-max)")
        ax.set_title(f"{dataset}, {model} on {machine}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic.write_bytes(path, buffer.getvalue())


def _curve(group: TtaGroup) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per epoch reached by at least half of the runs: median elapsed time, median/min/max accuracy."""
    xs, mid, low, high = [], [], [], []
    for epoch in range(1, max(len(r.epochs) for r in group.runs) + 1):
        points = [
            (e.elapsed_seconds, e.test_accuracy)
            for r in group.runs
            for e in r.epochs[epoch - 1 : epoch]
            if e.test_accuracy is not None and e.elapsed_seconds is not None
        ]
        if len(points) * 2 < len(group.runs):
            break
        accuracies = [a for _, a in points]
        xs.append(statistics.median(t for t, _ in points))
        mid.append(statistics.median(accuracies))
        low.append(min(accuracies))
        high.append(max(accuracies))
    return xs, mid, low, high


def write_report(path: Path, runs: list[RunRecord], all_runs: list[RunRecord], command: str) -> Path | None:
    text = render(runs, all_runs, path.parent, command)
    return None if text is None else atomic.write_text(path, text)
