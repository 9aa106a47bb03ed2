"""pytest-benchmark JSON -> the benchmark report (markdown).

The bench suites put what a reader needs into each benchmark's extra_info (model, variant,
batch, FLOPs per call, dataset ...). This module only reads that JSON, so a report can be rebuilt
from any saved `--benchmark-json` / `--benchmark-autosave` file with `mnist-bench report`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.variants import Variant
from ..system import atomic
from ..system.errors import MnistBenchError, UsageError
from ..system.machine import native_bf16
from .markdown import code, fmt_num, fmt_time, header, md, table

SUITE_ORDER = ("ceiling", "forward", "train-step", "epoch", "scaling")
SUITE_TITLES = {
    "ceiling": "Machine ceiling: large matmuls and a large convolution",
    "forward": "Forward (inference_mode)",
    "train-step": "Train step: forward + loss + backward + Adam",
    "epoch": "Full epoch through the input pipeline",
    "scaling": "Data-parallel scaling: a DDP train step (torchrun, gloo, loopback)",
}


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


# extra_info keys that must hold numbers; a row whose key holds anything else loses that key.
_NUMERIC_INFO = (
    "flops_per_call",
    "images_per_call",
    "batch",
    "compile_seconds",
    "test_accuracy",
    "gflops_per_s",
    "images_per_s",
    "threads",
    "mean_loss",
    "first_loss",
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _valid_row(bench: object) -> bool:
    if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
        return False
    stats = bench.get("stats")
    if not isinstance(stats, dict):
        return False
    if not all(_is_number(stats.get(k)) for k in ("median", "iqr", "rounds")) or stats["median"] <= 0:
        return False
    return isinstance(bench.get("extra_info", {}), dict) and isinstance(bench.get("group") or "", str)


def bench_rows(data: dict) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON that carry timings (name, stats); others are left out
    (`skipped_rows` counts them), so one odd entry cannot stop a report."""
    rows = []
    for bench in data.get("benchmarks") or []:
        if _valid_row(bench):
            info = {k: v for k, v in (bench.get("extra_info") or {}).items() if k not in _NUMERIC_INFO or _is_number(v)}
            rows.append(bench | {"extra_info": info})
    return rows


def skipped_rows(data: dict) -> int:
    return len(data.get("benchmarks") or []) - len(bench_rows(data))


def fastest(data: dict, suite: str, model: str, device: str, batch: int) -> dict | None:
    """extra_info of the fastest benchmark of a suite for one net, device and batch (session threads), or None."""
    rows = [
        b
        for b in bench_rows(data)
        if (info := b["extra_info"]).get("suite") == suite
        and info.get("model") == model
        and info.get("device") == device
        and info.get("batch") == batch
        and not info.get("threads_pinned")
    ]
    return min(rows, key=lambda b: b["stats"]["median"])["extra_info"] if rows else None


def bench_machine(data: dict) -> dict:
    """The project's machine block of a benchmark JSON (machine_info.mnist_bench; older files kept it
    under mnist_bench.machine)."""
    for outer, inner in (("machine_info", "mnist_bench"), ("mnist_bench", "machine")):
        block = data.get(outer)
        if isinstance(block, dict) and isinstance(block.get(inner), dict):
            return block[inner]
    return {}


def bench_variant(info: dict) -> Variant | None:
    """The Variant a benchmark's extra_info describes (None when it describes none, e.g. the ceiling)."""
    try:
        return Variant(
            info.get("device"),
            info.get("compile"),
            info.get("precision"),
            bool(info.get("channels_last")),
            bool(info.get("fast")),
        )
    except MnistBenchError:
        return None


def ceilings(benchmarks: list[dict]) -> dict[tuple[str, str], float]:
    """(device, precision) -> the best GFLOP/s of the ceiling suite in the same run: large matmuls and
    a large convolution (the ceiling is the best of both)."""
    return {key: rate for key, (rate, _) in _ceiling_rates(benchmarks).items()}


def _ceiling_rates(benchmarks: list[dict]) -> dict[tuple[str, str], tuple[float, str]]:
    found: dict[tuple[str, str], tuple[float, str]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if info.get("suite") == "ceiling" and info.get("gflops_per_s"):
            key = (info["device"], info["precision"])
            if info["gflops_per_s"] > found.get(key, (0.0, ""))[0]:
                found[key] = (info["gflops_per_s"], info.get("op", "matmul"))  # JSONs before the conv ceiling: matmul
    return found


def ceiling_for(info: dict, peaks: dict) -> float | None:
    """The ceiling a benchmark is measured against: its precision's best rate, but never below fp32's.

    Autocast runs the heavy ops in half precision, so where the hardware has a half-precision path
    (a GPU; a CPU with AVX-512 BF16 or AMX) its ceiling is the half-precision rate. On a CPU
    without one that rate is far below fp32's, and the machine's real ceiling is still the fp32 one.
    """
    device, precision = info.get("device"), info.get("precision", "fp32")
    fp32 = peaks.get((device, "fp32"))
    if precision == "fp32":
        return fp32
    half = peaks.get((device, precision))
    return max(p for p in (half, fp32) if p) if (half or fp32) else None


def ceiling_source(info: dict, benchmarks: list[dict]) -> str:
    """Which measured rate ceiling_for picked, for the report's cells: 'fp32 conv', 'bf16 matmul', ..."""
    rates = _ceiling_rates(benchmarks)
    device, precision = info.get("device"), info.get("precision", "fp32")
    half, fp32 = rates.get((device, precision)), rates.get((device, "fp32"))
    if precision != "fp32" and half and (not fp32 or half[0] > fp32[0]):
        return f"{precision} {half[1]}"
    return f"fp32 {fp32[1]}" if fp32 else "fp32"


def achieved_gflops(bench: dict) -> float | None:
    flops = bench.get("extra_info", {}).get("flops_per_call")
    return flops / bench["stats"]["median"] / 1e9 if flops else None


def is_baseline(info: dict) -> bool:
    """Eager fp32 contiguous at the session's thread count (and, for epochs, the seed's DataLoader)."""
    variant = bench_variant(info)
    plain = variant is not None and variant.is_plain
    return plain and info.get("loader", "seed") == "seed" and not info.get("threads_pinned")


def _group_rows(
    benchmarks: list[dict], peaks: dict, emulated: bool = False, everything: list[dict] | None = None
) -> tuple[list[list], list[str]]:
    """One row per benchmark of a group; `emulated`: the machine has no native bf16, so half-precision
    CPU rows say so (their ceiling is fp32's: see ceiling_for); `everything`: the whole run, whose
    ceiling rows name each row's ceiling."""
    everything = everything if everything is not None else benchmarks
    baseline = next((b for b in benchmarks if is_baseline(b.get("extra_info", {}))), None)
    rows, notes = [], []
    for bench in sorted(benchmarks, key=lambda b: b["stats"]["median"]):
        info, stats = bench.get("extra_info", {}), bench["stats"]
        median = stats["median"]
        per_call = info.get("images_per_call") or info.get("batch") or 0
        gflops = achieved_gflops(bench)
        peak = ceiling_for(info, peaks)
        speedup = baseline["stats"]["median"] / median if baseline else None
        extras = []
        if info.get("compile_seconds"):
            extras.append(f"compile {info['compile_seconds']:.1f} s")
        if info.get("test_accuracy") is not None:
            extras.append(f"acc {info['test_accuracy']:.4f}")
        if info.get("loader"):
            extras.append(f"{md(info['loader'])} loader")
        if emulated and info.get("device") == "cpu" and info.get("precision", "fp32") != "fp32":
            extras.append("**emulated** (no native bf16 on this CPU)")
        rows.append(
            [
                code(_short(bench)),
                fmt_time(median),
                fmt_time(stats["iqr"]),
                stats["rounds"],
                fmt_num(per_call / median, 0) if per_call else "-",
                fmt_num(gflops, 1),
                f"{100 * gflops / peak:.1f}% of {ceiling_source(info, everything)}" if gflops and peak else "-",
                f"{speedup:.2f}x" if speedup else "-",
                "; ".join(extras),
            ]
        )
    if baseline is None:
        notes.append("no eager fp32 contiguous baseline in this group: no speedups")
    return rows, notes


def _beats_ceiling(benchmarks: list[dict], peaks: dict) -> bool:
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        gflops, peak = achieved_gflops(bench), ceiling_for(info, peaks)
        if info.get("suite") != "ceiling" and gflops and peak and gflops > peak:
            return True
    return False


def scaling_rows(benches: list[dict]) -> tuple[list[list], str | None]:
    """One row per DDP case, with efficiencies against the 1-rank x 1-thread baseline of the same
    run, and a line answering: do N ranks x cores/N threads beat one process on all the cores?"""
    by_kind: dict[str, list[dict]] = {}
    for b in benches:
        by_kind.setdefault(b["extra_info"].get("scaling", "?"), []).append(b)
    base = (by_kind.get("baseline") or [None])[0]
    t1 = base["stats"]["median"] if base else None
    rows = []
    for b in sorted(benches, key=lambda b: (b["extra_info"].get("world_size", 1), b["extra_info"].get("scaling", ""))):
        info, median = b["extra_info"], b["stats"]["median"]
        n, kind = info.get("world_size", 1), info.get("scaling", "?")
        efficiency = "-"
        if t1 and kind == "strong":
            efficiency = f"{100 * t1 / (n * median):.0f}% (strong)"
        elif t1 and kind == "weak":
            efficiency = f"{100 * t1 / median:.0f}% (weak)"
        rows.append(
            [
                code(_short(b)),
                md(kind),
                n,
                info.get("threads_per_rank", "-"),
                info.get("per_rank_batch", "-"),
                info.get("batch", "-"),
                fmt_time(median),
                fmt_time(b["stats"]["iqr"]),
                fmt_num(info.get("batch", 0) / median, 0),
                efficiency,
                f"{100 * info['allreduce_share']:.0f}%" if n > 1 and _is_number(info.get("allreduce_share")) else "-",
            ]
        )
    plain = (by_kind.get("plain") or [None])[0]
    verdict = None
    for strong in sorted(by_kind.get("strong", []), key=lambda b: b["extra_info"].get("world_size", 0))[:1]:
        if plain:
            n, t = strong["extra_info"]["world_size"], strong["extra_info"]["threads_per_rank"]
            ratio = plain["stats"]["median"] / strong["stats"]["median"]
            verdict = (
                f"{n} ranks x {t} thread{'s' if t != 1 else ''} {'beat' if ratio > 1 else 'do not beat'} 1 rank x "
                f"{plain['extra_info'].get('threads_per_rank')} threads at the same global batch: {ratio:.2f}x its throughput"
            )
    return rows, verdict


def _short(bench: dict) -> str:
    return bench["name"].split("[")[-1].rstrip("]")


def headlines(groups: dict[str, list[dict]], peaks: dict) -> list[str]:
    """One line per group at the seed's batch (and per epoch group): baseline, best variant, speedup."""
    all_benchmarks = [b for benches in groups.values() for b in benches]
    lines = []
    for name, benches in groups.items():
        info = benches[0].get("extra_info", {})
        if info.get("suite") not in ("forward", "train-step", "epoch") or (
            info.get("suite") != "epoch" and info.get("batch") != 100
        ):
            continue
        baseline = next((b for b in benches if is_baseline(b.get("extra_info", {}))), None)
        best = min(benches, key=lambda b: b["stats"]["median"])
        if baseline is None:
            continue
        ratio = baseline["stats"]["median"] / best["stats"]["median"]
        line = f"- **{md(name)}**: baseline {code(_short(baseline))} {fmt_time(baseline['stats']['median'])}"
        if best is baseline:
            line += "; no variant beats it"
        else:
            line += f"; fastest {code(_short(best))} {fmt_time(best['stats']['median'])} (**{ratio:.2f}x**)"
        b_info = best.get("extra_info", {})
        flops = b_info.get("flops_per_call")
        peak = ceiling_for(b_info, peaks)
        if flops and peak:
            line += f", {100 * flops / best['stats']['median'] / 1e9 / peak:.0f}% of the {ceiling_source(b_info, all_benchmarks)} ceiling"
        if info.get("suite") == "epoch":
            accs = [b.get("extra_info", {}).get("test_accuracy") for b in (baseline, best)]
            if None not in accs:
                line += f"; test accuracy after the epoch {accs[0]:.4f} (baseline) vs {accs[1]:.4f}"
            line += f"; the 3x target is {'met' if ratio >= 3 else 'not met'}"
        lines.append(line)
    return sorted(lines)


def render(data: dict, command: str = "pytest bench --benchmark-only") -> str:
    benchmarks = bench_rows(data)
    extra = data.get("mnist_bench") if isinstance(data.get("mnist_bench"), dict) else {}
    machine = bench_machine(data)
    emulated = bool(machine.get("cpu_isa")) and not native_bf16(machine)  # an unknown ISA is not called emulated
    datasets = {b["extra_info"]["dataset"] for b in benchmarks if b.get("extra_info", {}).get("dataset")}
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
    out.append(
        "\nMedian and IQR over rounds. images/s = images per call / median. GFLOP/s counts the nets' convolution and "
        "linear FLOPs (forward: 2 x MACs per image; train step: forward + backward from torch.utils.flop_counter). "
        "% of ceiling compares with the best rate of the ceiling suite on the same device in this run, large matmuls and a "
        "large convolution, and names which (for bf16/fp16 variants, the faster of that precision's and fp32's: on a CPU "
        "without native bf16 that is fp32's). Compile times are first calls and include inductor's on-disk "
        "cache: a warm cache makes them short. Forward and train-step batches are real mnist-5k digits (the work does not "
        "depend on pixel values); the epoch suite's dataset is named in its rows. "
        "Speedup is against the group's eager fp32 contiguous baseline at the session's thread count (for epochs: the "
        "seed's DataLoader pipeline). Ids ending `-t1-b...` ran with one torch thread, all others with the header's count.\n"
    )
    peaks = ceilings(benchmarks)
    groups: dict[str, list[dict]] = {}
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or "ungrouped", []).append(bench)
    if _beats_ceiling(benchmarks, peaks):
        out.append(
            "\nSome rows exceed 100% of the ceiling: they ran faster than the ceiling suite's matmuls and convolution did on "
            "this device (a run from before the convolution joined the ceiling has only matmuls). The ceiling is a measured "
            "library rate, not the hardware's peak.\n"
        )
    lines = headlines(groups, peaks)
    for name, benches in groups.items():
        if benches[0]["extra_info"].get("suite") == "scaling" and (verdict := scaling_rows(benches)[1]):
            lines.append(f"- **{md(name)}**: {verdict}")
    if lines:
        out.append("\n## Headlines\n\n" + "\n".join(lines) + "\n")

    def order(name: str) -> tuple:
        info = groups[name][0].get("extra_info", {})
        suite = info.get("suite", "")
        model = {"simple": 0, "deep": 1}.get(info.get("model"), 2)
        return (
            SUITE_ORDER.index(suite) if suite in SUITE_ORDER else 99,
            model,
            info.get("device", ""),
            info.get("batch", 0),
            name,
        )

    current_suite = None
    for name in sorted(groups, key=order):
        suite = groups[name][0].get("extra_info", {}).get("suite", "")
        if suite != current_suite:
            out.append(f"\n## {SUITE_TITLES.get(suite, md(suite or 'Other'))}\n")
            current_suite = suite
        if suite == "scaling":
            rows, verdict = scaling_rows(groups[name])
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
                        "efficiency",
                        "all-reduce share",
                    ],
                    rows,
                    align="llrrrrrrrrr",
                )
            )
            if verdict:
                out.append(f"\n**{verdict}.**\n")
            continue
        if suite == "ceiling":
            out.append(
                table(
                    ["benchmark", "op", "median", "IQR", "rounds", "GFLOP/s"],
                    [
                        [
                            code(b["name"]),
                            md(b["extra_info"].get("op", "matmul")),
                            fmt_time(b["stats"]["median"]),
                            fmt_time(b["stats"]["iqr"]),
                            b["stats"]["rounds"],
                            fmt_num(b["extra_info"].get("gflops_per_s"), 1),
                        ]
                        for b in groups[name]
                    ],
                )
            )
            continue
        rows, notes = _group_rows(groups[name], peaks, emulated, benchmarks)
        out.append(f"\n### {md(name)}\n")
        out.append(
            table(
                ["variant", "median", "IQR", "rounds", "images/s", "GFLOP/s", "% of ceiling (which)", "speedup", "notes"],
                rows,
                align="lrrrrrrrl",
            )
        )
        out += [f"\n_{note}_\n" for note in notes]
    return "".join(out)


def _speedups_with_whiskers(benches: list[dict]) -> list[tuple[str, float, float, float]]:
    """(variant, speedup, low, high) against the group's baseline; whiskers from the quartiles of both."""
    base = next((b for b in benches if is_baseline(b["extra_info"])), None)
    if base is None:
        return []
    bq1, bq3 = quartiles(base["stats"])
    out = []
    for b in sorted(benches, key=lambda b: b["stats"]["median"], reverse=True):
        q1, q3 = quartiles(b["stats"])
        out.append((_short(b), base["stats"]["median"] / b["stats"]["median"], bq1 / q3, bq3 / q1))
    return out


def quartiles(stats: dict) -> tuple[float, float]:
    """A benchmark's first and third quartiles; files without them get an IQR around the median, never
    below zero (a ratio divides by the lower quartile)."""
    q1, q3 = stats.get("q1"), stats.get("q3")
    if _is_number(q1) and _is_number(q3) and q1 > 0:
        return q1, q3
    half = stats["iqr"] / 2
    return max(stats["median"] - half, 1e-12), stats["median"] + half


def write_plots(data: dict, path: Path) -> list[Path]:
    """PNGs beside the report: speedup over the eager fp32 baseline per group at the seed's batch (whiskers:
    the quartiles of both), and images/s against batch size per forward variant."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bench_rows(data)
    groups: dict[str, list[dict]] = {}
    for b in rows:
        info = b["extra_info"]
        if info.get("suite") in ("forward", "train-step", "epoch") and (info.get("suite") == "epoch" or info.get("batch") == 100):
            groups.setdefault(b.get("group") or "?", []).append(b)
    panels = {name: bars for name, benches in sorted(groups.items()) if (bars := _speedups_with_whiskers(benches))}
    written = []

    def save(fig, suffix: str) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        written.append(atomic.write_bytes(path.with_name(f"{path.stem}-{suffix}.png"), buffer.getvalue()))

    if panels:
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(9, 1.2 + sum(0.28 * len(b) + 0.6 for b in panels.values())),
            gridspec_kw={"height_ratios": [len(b) + 1 for b in panels.values()]},
            squeeze=False,
        )
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
        axes[-1, 0].set_xlabel("speedup over the group's eager fp32 baseline (whiskers: quartiles of both)")
        save(fig, "speedups")
    forward: dict[tuple[str, str], dict[int, float]] = {}
    for b in rows:
        info = b["extra_info"]
        if (
            info.get("suite") == "forward"
            and info.get("device")
            and _is_number(info.get("batch"))
            and not info.get("threads_pinned")
        ):
            label = (str(info.get("model")), _short(b).rsplit("-b", 1)[0])
            forward.setdefault(label, {})[info["batch"]] = info["batch"] / b["stats"]["median"]
    curves = {label: points for label, points in forward.items() if len(points) > 1}
    if curves:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for (_, variant), points in sorted(curves.items()):
            batches = sorted(points)
            ax.plot(batches, [points[b] for b in batches], marker="o", label=variant)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s (forward)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(alpha=0.3)
        save(fig, "batch")
    return written


def write_report(data: dict, path: Path, command: str = "pytest bench --benchmark-only") -> Path:
    plots = write_plots(data, Path(path))
    links = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    return atomic.write_text(path, render(data, command) + ("\n## Plots\n" + links if links else ""))
