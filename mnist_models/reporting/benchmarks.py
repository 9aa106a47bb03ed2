"""pytest-benchmark JSON -> the benchmark report (markdown).

The bench suites write each benchmark's identity and measurements into its extra_info; this module
reads them only through core.bench_row.BenchRow, so a report can be rebuilt from any saved
`--benchmark-json` / `--benchmark-autosave` file with `mnist-bench report`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..core.bench_row import BenchRow, bench_rows, skipped_rows
from ..core.stats import format_level
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import machine_key, native_bf16
from .markdown import code, fmt_num, fmt_time, header, md, plural, table

SUITE_ORDER = ("ceiling", "forward", "train-step", "epoch", "process", "scaling")
SUITE_TITLES = {
    "ceiling": "Machine ceiling: large matmuls, a large convolution, and copy bandwidth",
    "forward": "Forward (inference_mode)",
    "train-step": "Train step: forward + loss + backward + Adam",
    "epoch": "Full epoch through the input pipeline",
    "process": "The whole train process for one epoch, beside the seed pipeline's process (alternated; the seed's process on the C library's own malloc, as the seed's script runs)",
    "scaling": "Data-parallel scaling: a DDP train step (torchrun, gloo, loopback)",
}


def pairs_with_level(row: BenchRow) -> str:
    """'5 alternated pairs, interval 93.8%': the interval's real level. Rows before levels were stored
    had a bootstrap labelled 95%, whose level at their n is not known, and say so."""
    pairs = f"{row.speedup_pairs:.0f} alternated pairs"
    if row.speedup_level:
        return f"{pairs}, interval {format_level(row.speedup_level)}"
    return f"{pairs}, interval level unknown (older run)"


def load_bench_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"no benchmark JSON at {path}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read benchmark JSON {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UsageError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def fastest(data: dict, suite: str, model: str, device: str, batch: int) -> BenchRow | None:
    """The fastest benchmark of a suite for one net, device and batch (session threads), or None."""
    rows = [
        r
        for r in bench_rows(data)
        if r.suite == suite
        and r.identity.model == model
        and r.variant.device == device
        and r.identity.batch == batch
        and not r.threads_pinned
    ]
    return min(rows, key=lambda r: r.median) if rows else None


def bench_machine(data: dict) -> dict:
    """The project's machine block of a benchmark JSON (machine_info.mnist_bench; older files kept it
    under mnist_bench.machine)."""
    for outer, inner in (("machine_info", "mnist_bench"), ("mnist_bench", "machine")):
        block = data.get(outer)
        if isinstance(block, dict) and isinstance(block.get(inner), dict):
            return block[inner]
    return {}


def ceilings(rows: list[BenchRow]) -> dict[tuple[str, str], float]:
    """(device, precision) -> the best GFLOP/s of the ceiling suite in the same run: large matmuls and
    a large convolution (the ceiling is the best of both)."""
    return {key: rate for key, (rate, _) in _ceiling_rates(rows).items()}


def _ceiling_rates(rows: list[BenchRow]) -> dict[tuple[str, str], tuple[float, str]]:
    found: dict[tuple[str, str], tuple[float, str]] = {}
    for row in rows:
        rate = row.achieved_gflops
        if row.suite == "ceiling" and rate:
            key = (row.variant.device, row.variant.precision)
            if rate > found.get(key, (0.0, ""))[0]:
                found[key] = (rate, (row.identity.op or "matmul").split("-")[0])
    return found


def ceiling_for(row: BenchRow, peaks: dict) -> float | None:
    """The ceiling a benchmark is measured against: its precision's best rate, but never below fp32's.

    Autocast runs the heavy ops in half precision, so where the hardware has a half-precision path
    (a GPU; a CPU with AVX-512 BF16 or AMX) its ceiling is the half-precision rate. On a CPU
    without one that rate is far below fp32's, and the machine's real ceiling is still the fp32 one.
    """
    device, precision = row.variant.device, row.variant.precision
    fp32 = peaks.get((device, "fp32"))
    if precision == "fp32":
        return fp32
    half = peaks.get((device, precision))
    return max(p for p in (half, fp32) if p) if (half or fp32) else None


def ceiling_source(row: BenchRow, rows: list[BenchRow]) -> str:
    """Which measured rate ceiling_for picked, for the report's cells: 'fp32 conv', 'bf16 matmul', ..."""
    rates = _ceiling_rates(rows)
    device, precision = row.variant.device, row.variant.precision
    half, fp32 = rates.get((device, precision)), rates.get((device, "fp32"))
    if precision != "fp32" and half and (not fp32 or half[0] > fp32[0]):
        return f"{precision} {half[1]}"
    return f"fp32 {fp32[1]}" if fp32 else "fp32"


def ceiling_share(row: BenchRow, rows: list[BenchRow]) -> float | None:
    """A benchmark's achieved GFLOP/s as a share of its run's own measured ceiling."""
    gflops, peak = row.achieved_gflops, ceiling_for(row, ceilings(rows))
    return gflops / peak if gflops and peak and row.suite != "ceiling" else None


def group_baseline(row: BenchRow, rows: list[BenchRow]) -> BenchRow | None:
    """The eager fp32 baseline of a row's group in the same run, or None."""
    return next((r for r in rows if r.group == row.group and r.is_baseline), None)


def roofline_shares(rows: list[BenchRow], machine: dict) -> dict[str, tuple[float, str]]:
    """name -> (share of the roofline's rate, the roof that accounts for most of it) for the CPU
    forward and train-step rows at the session's threads: the nets' per-layer work (core/roofline.py)
    against this run's own roofs (its best compute ceiling and its copies). Empty for runs timed
    before the copies or the machine's cache sizes were recorded."""
    from ..core.nets import build_model, make_fast
    from ..core.roofline import Roofs, monotone_bandwidth, step_roofline, step_work

    cache = machine.get("cache_bytes") or {}
    copies = {
        r.identity.op.removeprefix("copy-"): r.achieved_gbytes
        for r in rows
        if r.suite == "ceiling" and r.achieved_gbytes and not r.threads_pinned and r.identity.op
    }
    if not cache or set(copies) != {"L2", "LLC", "DRAM"}:
        return {}
    peaks, out = ceilings(rows), {}
    for r in rows:
        compute = ceiling_for(r, peaks)
        if r.suite not in ("forward", "train-step") or r.variant.device != "cpu" or r.threads_pinned or not compute:
            continue
        threads = r.identity.threads or 1
        capacity = {"L2": cache.get("L2", 0) * threads, "LLC": cache.get("LLC", 0)}
        roofs = Roofs(compute, monotone_bandwidth(copies), capacity, threads)
        model = build_model(r.identity.model)
        work = step_work(make_fast(model) if r.variant.fast else model, r.identity.batch, r.variant.precision)
        if r.suite == "forward":
            work = [w for w in work if w.phase == "forward"]
        seconds, roof = step_roofline(work, roofs)
        out[r.name] = (seconds / r.median, roof)
    return out


def _group_rows(
    group: list[BenchRow], peaks: dict, emulated: bool, everything: list[BenchRow], roofline: dict | None = None
) -> tuple[list[list], list[str]]:
    """One row per benchmark of a group; `emulated`: the machine has no native bf16, so half-precision
    CPU rows say so (their ceiling is fp32's: see ceiling_for); `everything`: the whole run, whose
    ceiling rows name each row's ceiling."""
    baseline = next((r for r in group if r.is_baseline), None)
    rows, notes = [], []
    for r in sorted(group, key=lambda r: r.median):
        gflops, peak = r.achieved_gflops, ceiling_for(r, peaks)
        extras = []
        if r.compile_seconds:
            extras.append(f"compile {r.compile_seconds:.1f} s")
        if r.test_accuracy is not None:
            extras.append(f"acc {r.test_accuracy:.4f}")
        if r.identity.loader:
            extras.append(f"{md(r.identity.loader)} loader")
        if r.speedup_vs_seed_process:
            extras.append(
                f"**{r.speedup_vs_seed_process:.2f}x** ({r.speedup_low:.2f}-{r.speedup_high:.2f}) the seed pipeline's "
                f"process, {pairs_with_level(r)}"
            )
        if r.rounds < 5:
            extras.append(f"{plural(r.rounds, 'round')}: no real spread")
        if emulated and r.variant.device == "cpu" and r.variant.precision != "fp32":
            extras.append("**emulated** (no native bf16 on this CPU)")
        rows.append(
            [
                code(r.label),
                fmt_time(r.median),
                fmt_time(r.iqr),
                r.rounds,
                fmt_num(r.images_per_s, 0),
                fmt_num(gflops, 1),
                (f"{100 * gflops / peak:.1f}% of {ceiling_source(r, everything)}" if gflops and peak else "-")
                + (
                    f"; {100 * roofline[r.name][0]:.0f}% of its roofline ({roofline[r.name][1]}-bound)"
                    if roofline and r.name in roofline
                    else ""
                ),
                speedup_cell(baseline, r) if baseline else "-",
                "; ".join(extras),
            ]
        )
    if baseline is None:
        notes.append("no eager fp32 contiguous baseline in this group: no speedups")
    return rows, notes


def speedup_cell(baseline: BenchRow, row: BenchRow) -> str:
    """A speedup with the range its quartiles allow ('1.52x (1.41-1.60)'); 'within noise' when that
    range holds 1. Rounds of one benchmark are not independent draws: this is the runs' spread, not
    a confidence interval (for one, compare the two interleaved: mnist-bench ab)."""
    if row is baseline:
        return "1.00x"
    (bq1, bq3), (q1, q3) = baseline.quartiles(), row.quartiles()
    low, high = bq1 / q3, bq3 / q1
    cell = f"{baseline.median / row.median:.2f}x ({low:.2f}-{high:.2f})"
    return cell + (" within noise" if low <= 1 <= high else "")


def _beats_ceiling(rows: list[BenchRow], peaks: dict) -> bool:
    return any(r.suite != "ceiling" and (g := r.achieved_gflops) and (p := ceiling_for(r, peaks)) and g > p for r in rows)


def scaling_rows(group: list[BenchRow]) -> tuple[list[list], str | None]:
    """One row per DDP case, with efficiencies against 1 rank with the same threads per rank in the
    same run (the same work per rank, so they hold on any core count), the step split into compute,
    waiting for the slowest rank and exposed communication, any straggler, and a line answering: do
    N ranks x cores/N threads beat one process on all the cores?"""
    baselines = {r.identity.threads: r for r in group if r.scaling == "baseline"}
    rows = []
    for r in sorted(group, key=lambda r: (r.identity.ranks, r.scaling or "", -(r.identity.threads or 0))):
        n, kind, base = r.identity.ranks, r.scaling or "?", baselines.get(r.identity.threads)
        efficiency = "-"
        if base and kind == "strong":
            efficiency = f"{100 * base.median / (n * r.median):.0f}% (strong)"
        elif base and kind == "weak":
            efficiency = f"{100 * base.median / r.median:.0f}% (weak)"
        split = "-"
        if n > 1 and r.compute_s is not None and r.wait_s is not None and r.comm_s is not None:
            total = r.compute_s + r.wait_s + r.comm_s
            split = " / ".join(f"{100 * part / total:.0f}%" for part in (r.compute_s, r.wait_s, r.comm_s))
        straggler = f"rank {r.straggler} ({r.straggler_ratio:.2f}x)" if r.straggler is not None and r.straggler_ratio else "-"
        rows.append(
            [
                code(r.label),
                md(kind),
                n,
                r.identity.threads or "-",
                r.per_rank_batch or "-",
                r.identity.batch or "-",
                fmt_time(r.median),
                fmt_time(r.iqr),
                fmt_num(r.images_per_s, 0),
                efficiency,
                split,
                straggler,
            ]
        )
    plain = next((r for r in group if r.scaling == "plain"), None)
    verdict = None
    everything = [
        r
        for r in group
        if r.scaling in ("strong", "weak") and plain and r.identity.ranks * (r.identity.threads or 0) == plain.identity.threads
    ]
    for ranked in sorted(everything, key=lambda r: (r.scaling != "strong", r.identity.ranks))[:1]:
        n, t = ranked.identity.ranks, ranked.identity.threads
        ratio = (ranked.images_per_s or 0) / (plain.images_per_s or 1)
        verdict = (
            f"{n} ranks x {t} thread{'s' if t != 1 else ''} ({ranked.scaling}) {'beat' if ratio > 1 else 'do not beat'} 1 rank x "
            f"{plain.identity.threads} threads on the same cores: {ratio:.2f}x its throughput"
        )
    return rows, verdict


def _seed_batch_group(group: list[BenchRow]) -> bool:
    """Forward and train-step groups at the seed's batch, and every epoch group: the headline ones."""
    first = group[0]
    return first.suite == "epoch" or (first.suite in ("forward", "train-step") and first.identity.batch == 100)


def headlines(groups: dict[str, list[BenchRow]], peaks: dict) -> list[str]:
    """One line per group at the seed's batch (and per epoch group): baseline, best variant, speedup."""
    everything = [r for group in groups.values() for r in group]
    lines = []
    for name, group in groups.items():
        if not _seed_batch_group(group):
            continue
        baseline = next((r for r in group if r.is_baseline), None)
        best = min(group, key=lambda r: r.median)
        if baseline is None:
            continue
        line = f"- **{md(name)}**: baseline {code(baseline.label)} {fmt_time(baseline.median)}"
        if len(group) == 1:
            line += "; the only variant timed in this run"
        elif best is baseline:
            line += f"; none of the {len(group) - 1} other variants beats it"
        else:
            line += f"; fastest {code(best.label)} {fmt_time(best.median)} (**{speedup_cell(baseline, best)}**)"
        if (share := ceiling_share(best, everything)) is not None:
            line += f", {100 * share:.0f}% of the {ceiling_source(best, everything)} ceiling"
        known = baseline.test_accuracy is not None and best.test_accuracy is not None
        if best.suite == "epoch" and best is not baseline and known:
            line += (
                f"; test accuracy after the epoch {baseline.test_accuracy:.4f} (the seed pipeline) vs {best.test_accuracy:.4f}"
            )
        lines.append(line)
    return sorted(lines)


GLOSSARY = """
**Words used below.** *Seed pipeline*: the seed's own way to feed a net (torchvision's DataLoader, eager,
fp32). *Tensor loader*: the whole dataset as one in-memory tensor, batches sliced from it. *cl*:
channels_last, the convolutions in NHWC memory format. *fast*: the fast path (max-pool before ReLU,
in-place ReLU, fused Adam), the same function and weights. *Conv ceiling*: the fastest rate this
machine reached on a large convolution in this run, the roof the nets' convolutions are measured
against. *Strong / weak scaling*: N ranks share the seed's batch of 100 / each rank takes 100.
*Data made by code X*: the commit whose code measured these rows. *Within noise*: the range that the two
rows' quartiles allow for their ratio holds 1, so it cannot tell them apart.
"""


def render(data: dict, command: str = "pytest bench --benchmark-only") -> str:
    rows = bench_rows(data)
    extra = data.get("mnist_bench") if isinstance(data.get("mnist_bench"), dict) else {}
    machine = bench_machine(data)
    emulated = bool(machine.get("cpu_isa")) and not native_bf16(machine)  # an unknown ISA is not called emulated
    datasets = {r.identity.dataset for r in rows if r.identity.dataset}
    out = [
        header(
            "Benchmarks: forward, train step, full epoch",
            machine,
            datasets,
            command,
            busy=extra.get("busy"),
            when=(data.get("datetime") or "")[:16].replace("T", " ") + " UTC",
        )
    ]
    out.append(GLOSSARY)
    if extra.get("partial"):
        out.insert(
            1,
            f"\n**PARTIAL REPORT** ({md(extra['partial'])}): only the benchmarks that finished are below; "
            "the complete report, if any, was left as it was.\n",
        )
    if skipped_rows(data):
        out.append(f"- **WARNING**: {skipped_rows(data)} entries without a name and timings were left out\n")
    if extra.get("cores_used_by_others_during_run") is not None:
        out.append(
            f"- **During the run** other processes used {extra['cores_used_by_others_during_run']} cores on average"
            + (f"; suite wall time {extra['wall_seconds']:.0f} s" if extra.get("wall_seconds") else "")
            + "\n"
        )
    peaks = ceilings(rows)
    shares = roofline_shares(rows, machine)
    groups: dict[str, list[BenchRow]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    if _beats_ceiling(rows, peaks):
        out.append(
            "\nSome rows exceed 100% of the ceiling: they ran faster than the ceiling suite's matmuls and convolution did on "
            "this device (a run from before the convolution joined the ceiling has only matmuls). The ceiling is a measured "
            "library rate, not the hardware's peak.\n"
        )
    lines = headlines(groups, peaks)
    for name, group in groups.items():
        for r in group:
            if r.speedup_vs_seed_process:
                lines.append(
                    f"- **{md(name)}**: the whole `train` process ({code(r.label)}, one epoch on {md(r.identity.dataset)}) "
                    f"{fmt_time(r.median)}, **{r.speedup_vs_seed_process:.2f}x** ({r.speedup_low:.2f}-{r.speedup_high:.2f}) "
                    f"the seed pipeline's process, {pairs_with_level(r)}"
                )
        if group[0].suite == "scaling" and (verdict := scaling_rows(group)[1]):
            lines.append(f"- **{md(name)}**: {verdict}")
    if lines:
        out.append("\n## Headlines\n\n" + "\n".join(lines) + "\n")
    # The answer first, then how it was measured.
    out.append("\n## How to read the tables\n")
    out.append(
        "\nMedian and IQR over rounds. images/s = images per call / median. GFLOP/s counts the nets' convolution and "
        "linear FLOPs (forward: 2 x MACs per image; train step: forward + backward from torch.utils.flop_counter). "
        "% of ceiling compares with the best rate of the ceiling suite on the same device in this run, large matmuls and a "
        "large convolution, and names which (for bf16/fp16 variants, the faster of that precision's and fp32's: on a CPU "
        "without native bf16 that is fp32's). Where the run timed the ceiling's copies, a CPU forward or train-step row also gives its share of "
        "its roofline: the least time the nets' per-layer FLOPs and bytes allow under this run's compute and copy roofs "
        "(mnist_models/core/roofline.py), over the measured time, and the roof that accounts for most of that time. Compile times are first calls and include inductor's on-disk "
        "cache: a warm cache makes them short. Forward and train-step batches are real mnist-5k digits (the work does not "
        "depend on pixel values); the epoch suite's dataset is named in its rows. "
        "Speedup is against the group's eager fp32 contiguous baseline at the session's thread count (for epochs: the "
        "seed's DataLoader pipeline), with the range the two rows' quartiles allow, and *within noise* when that range holds 1. Ids ending `-t1-b...` ran with one torch thread, all others with the header's count.\n"
    )

    def order(name: str) -> tuple:
        first = groups[name][0]
        return (
            SUITE_ORDER.index(first.suite) if first.suite in SUITE_ORDER else 99,
            {"simple": 0, "deep": 1}.get(first.identity.model or "", 2),
            first.variant.device,
            first.identity.batch or 0,
            name,
        )

    current_suite = None
    for name in sorted(groups, key=order):
        suite = groups[name][0].suite
        if suite != current_suite:
            out.append(f"\n## {SUITE_TITLES.get(suite, md(suite or 'Other'))}\n")
            current_suite = suite
        if suite == "scaling":
            cells, verdict = scaling_rows(groups[name])
            out.append(f"\n### {md(name)}\n")
            out.append(
                table(
                    [
                        "case",
                        "kind",
                        "ranks",
                        "threads / rank",
                        "batch / rank",
                        "global batch",
                        "median step",
                        "IQR",
                        "images/s",
                        "efficiency (vs 1 rank, same threads)",
                        "compute / wait / comm",
                        "straggler",
                    ],
                    cells,
                    align="llrrrrrrrrrl",
                )
            )
            out.append(
                "\nEfficiency: N ranks x t threads against 1 rank x t threads in this run (strong: the same global batch, "
                "ideal 100%; weak: the batch on every rank). compute / wait / comm: a step's median split into the ranks' "
                "own compute (their mean), their wait for the slowest rank, and the all-reduce left exposed. A straggler is a rank "
                "whose compute is slower beyond noise (its interquartile range above every other rank's).\n"
            )
            if verdict:
                out.append(f"\n**{verdict}.**\n")
            continue
        if suite == "ceiling":
            out.append(
                table(
                    ["benchmark", "op", "median", "IQR", "rounds", "GFLOP/s", "GB/s (copy: read + write)"],
                    [
                        [
                            code(r.label),
                            md(r.identity.op),
                            fmt_time(r.median),
                            fmt_time(r.iqr),
                            r.rounds,
                            fmt_num(r.achieved_gflops, 1),
                            fmt_num(r.achieved_gbytes, 1),
                        ]
                        for r in groups[name]
                    ],
                )
            )
            if any(r.achieved_gbytes for r in groups[name]):
                out.append(
                    "\nThe copies are the roofline's bandwidth roofs: a tensor sized to fit all the threads' L2, the "
                    "last-level cache, or neither (DRAM). An L2-sized copy is short enough that torch's per-call dispatch "
                    "shows in it. Each profile measures the same roofs for its roofline (conv-kernels.md).\n"
                )
            continue
        cells, notes = _group_rows(groups[name], peaks, emulated, rows, shares)
        out.append(f"\n### {md(name)}\n")
        out.append(
            table(
                [
                    "variant",
                    "median",
                    "IQR",
                    "rounds",
                    "images/s",
                    "GFLOP/s",
                    "% of ceiling (which); of roofline",
                    "speedup",
                    "notes",
                ],
                cells,
                align="lrrrrrrrl",
            )
        )
        out += [f"\n_{note}_\n" for note in notes]
    return "".join(out)


def _speedups_with_whiskers(group: list[BenchRow]) -> list[tuple[str, float, float, float]]:
    """(variant, speedup, low, high) against the group's baseline; whiskers from the quartiles of both."""
    base = next((r for r in group if r.is_baseline), None)
    if base is None or len(group) == 1:  # a baseline alone is a bar of 1.0: nothing to see
        return []
    bq1, bq3 = base.quartiles()
    out = []
    for r in sorted(group, key=lambda r: r.median, reverse=True):
        q1, q3 = r.quartiles()
        out.append((r.label, base.median / r.median, bq1 / q3, bq3 / q1))
    return out


def write_plots(data: dict, path: Path) -> list[Path]:
    """PNGs beside the report: speedup over the eager fp32 baseline per group at the seed's batch (whiskers:
    the quartiles of both), and images/s against batch size per forward variant; titled with the machine."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bench_rows(data)
    machine = machine_key(bench_machine(data))
    groups: dict[str, list[BenchRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    panels = {
        name: bars
        for name, group in sorted(groups.items())
        if _seed_batch_group(group) and (bars := _speedups_with_whiskers(group))
    }
    written = []

    def save(fig, suffix: str) -> None:
        buffer = io.BytesIO()
        # Room for a suptitle on top; bbox_inches="tight" keeps long tick labels inside the image.
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic.write_bytes(path.with_name(f"{path.stem}-{suffix}.png"), buffer.getvalue()))

    if panels:
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(9, 1.6 + sum(0.28 * len(b) + 0.6 for b in panels.values())),
            gridspec_kw={"height_ratios": [len(b) + 1 for b in panels.values()]},
            squeeze=False,
        )
        fig.suptitle(f"Speedup over eager fp32, {machine}", fontsize=9)
        for ax, (name, bars) in zip(axes[:, 0], panels.items()):
            ys = range(len(bars))
            ax.barh(
                list(ys),
                [b[1] for b in bars],
                xerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]],
                capsize=2,
                color=["tab:blue" if b[1] >= 1 else "tab:orange" for b in bars],
            )
            ax.axvline(1, color="black", linewidth=0.8)
            ax.set_yticks(list(ys), [b[0] for b in bars], fontsize=6)
            ax.set_title(name, fontsize=8, loc="left")
        axes[-1, 0].set_xlabel(
            "speedup over the group's eager fp32 baseline (blue faster, orange slower; whiskers: quartiles of both)"
        )
        save(fig, "speedups")
    # images/s per batch size, with the range the rounds' quartiles give (batch / q3 .. batch / q1)
    forward: dict[tuple[str, str], dict[int, tuple[float, float, float]]] = {}
    for r in rows:
        if r.suite == "forward" and r.identity.batch and not r.threads_pinned:
            label = (str(r.identity.model), replace(r.identity, batch=None).label())
            q1, q3 = r.quartiles()
            b = r.identity.batch
            forward.setdefault(label, {})[b] = (b / r.median, b / q3, b / q1)
    curves = {label: points for label, points in forward.items() if len(points) > 1}
    if curves:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for (_, variant), points in sorted(curves.items()):
            batches = sorted(points)
            mid = [points[b][0] for b in batches]
            ax.errorbar(
                batches,
                mid,
                yerr=[[m - points[b][1] for m, b in zip(mid, batches)], [points[b][2] - m for m, b in zip(mid, batches)]],
                marker="o",
                capsize=2,
                label=variant,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s (forward; bars: quartiles of the rounds)")
        ax.set_title(f"Forward throughput by batch size, {machine}", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(alpha=0.3)
        save(fig, "batch")
    return written


def write_report(data: dict, path: Path, command: str = "pytest bench --benchmark-only") -> Path:
    plots = write_plots(data, Path(path))
    links = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    return atomic.write_text(path, render(data, command) + ("\n## Plots\n" + links if links else ""))
