"""The conv-kernel report: one section per profiled run, rendered from the stored profile summaries
(profiling/profiler.py writes them)."""

from __future__ import annotations

import io
from pathlib import Path

from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import machine_key, mixed_machines_warning
from .markdown import code, fmt_num, header, md, table


def _shapes(shapes: list) -> str:
    return md(" ".join("x".join(str(d) for d in s) for s in shapes[:3]))


COMPILED_GRAPH = "## Call CompiledFxGraph "


def _op_name(name: str, width: int = 60) -> str:
    """An op as a user can place it: inductor's generated code is named by its graph's hash in the
    trace (`## Call CompiledFxGraph f...`); shown as `inductor graph f...`."""
    if name.startswith(COMPILED_GRAPH):
        return f"inductor graph {code(name.removeprefix(COMPILED_GRAPH)[:10])}"
    return code(name[:width])


def _compiled_line(s: dict) -> str:
    """Under compile: how much of the step inductor's generated graphs take together."""
    graphs = [r for r in s["other_rows"] if r["name"].startswith(COMPILED_GRAPH)]
    if not graphs:
        return ""
    share = sum(r["share"] for r in graphs)
    return (
        f"inductor's generated code ({len(graphs)} graph{'s' if len(graphs) > 1 else ''} among the rows below: fused ReLU, pooling, "
        f"their backward, the optimizer's elementwise work) takes {100 * share:.1f}% of the step together. "
    )


def _op_row(r: dict, fourth: str) -> list[str]:
    """An op's row: name, calls, self ms, `fourth` (its share, or its total ms), input shapes."""
    return [
        _op_name(r["name"], 60),
        fmt_num(r["calls_per_step"], 0),
        f"{r['self_ms_per_step']:.2f}",
        fourth,
        _shapes(r["input_shapes"]),
    ]


def render_kernel_report(summaries: list[dict], command: str, plotted: frozenset[str] = frozenset()) -> str:

    if not summaries:
        raise UsageError("no profile summaries to report; run mnist-bench profile first")
    machine = summaries[-1]["machine"]
    out = [
        header(
            "Convolution kernels: which kernels run the convs, and where a step's time goes",
            machine,
            ["mnist-5k (real digits; the op mix does not depend on the data)"],
            command,
        )
    ]
    mixed = mixed_machines_warning([s["machine"] for s in summaries], "profiles")
    if mixed:
        out.append(f"- **{mixed}**\n")
    overview = []
    for s in summaries:
        top = s["other_rows"][0] if s["other_rows"] else None
        overview.append(
            [
                code(s["run"]),
                f"{s['step_ms']:.1f} ms",
                f"{100 * s['conv_share']:.0f}%",
                f"{_op_name(top['name'], 50)} ({100 * top['share']:.0f}%)" if top else "-",
                f"{s['memory']['step_peak_mb']:.1f} MB" if s.get("memory") else "-",
                _roofline_cell(s.get("roofline")),
            ]
        )
    out.append("\n## Overview\n\n")
    out.append(
        table(
            ["run", "profiled step", "conv share", "largest non-conv row", "step memory peak", "of its roofline"],
            overview,
            align="lrrlrr",
        )
    )
    answers = [line for s in summaries if (line := _roofline_answer(s))]
    if answers:
        out.append(
            "\n**Against the roofline** (the rate the machine's measured roofs allow each layer; see each run's section):\n\n"
        )
        out.append("\n".join(answers) + "\n")
    # The answers first (overview, roofline), then how they were measured.
    out.append("\n## How to read the sections\n")
    out.append(
        "\nEach section is one `mnist-bench profile` run (a schedule of wait/warmup/active steps; times are per step, averaged over the active "
        "steps, with the profiler's own overhead: compare shares, and take absolute speed from the benchmark report). "
        "Convolution FLOPs come from the nets' own per-layer count (`layer_flops`), not the profiler, which counts no backward or "
        "compiled convolution: backward = 2x forward, except the first layer (1x: images need no gradient). "
        "Rows that only wrap other rows (aten::conv2d, autograd nodes, any row whose self time is under half its total) are left out. "
        "Under torch.compile, an `inductor graph` row (the trace's `## Call CompiledFxGraph` with the graph's hash) is the time of inductor's generated kernels (fused ReLU, pooling, "
        "their backward and the optimizer's elementwise work); convolutions stay library calls (extern kernels).\n"
    )
    for s in summaries:
        out.append(f"\n## {code(s['run'])}\n\n")
        out.append(
            f"{md(s['config']['mode'])} step, batch {md(s['config']['batch_size'])}, {md(s['device_name'])}; {md(s['timeline'])} per step "
            f"{s['step_ms']:.1f} ms (wall {s['wall_ms_per_step_while_profiling']:.1f} ms while profiling); "
            f"convolutions {100 * s['conv_share']:.0f}% of it. {_compiled_line(s)}Trace: {code(s['trace_dir'])}.\n\n"
        )
        rows = [
            [
                _op_name(r["name"], 60),
                md(r.get("layer", "-")),
                fmt_num(r["calls_per_step"], 0),
                f"{r['self_ms_per_step']:.2f}",
                f"{r['total_ms_per_step']:.2f}",
                f"{100 * r['share']:.1f}%",
                _shapes(r["input_shapes"]),
                fmt_num(r["flops_per_call"] / 1e6, 1) if r.get("flops_per_call") else "-",
                fmt_num(r.get("gflops_per_s"), 1),
            ]
            for r in s["conv_rows"]
        ]
        out.append("Convolution ops and kernels:\n\n")
        out.append(
            table(
                ["op / kernel", "layer", "calls", "self ms", "total ms", "share", "input shapes", "MFLOP/call", "GFLOP/s"],
                rows,
                align="llrrrrlrr",
            )
        )
        rows = [_op_row(r, f"{100 * r['share']:.1f}%") for r in s["other_rows"]]
        out.append("\nTop other ops:\n\n")
        out.append(table(["op", "calls", "self ms", "share", "input shapes"], rows, align="lrrrl"))
        out.append(_roofline_text(s, s["run"] in plotted))
        out.append(_memory_text(s.get("memory")))
        out.append(_trace_check_text(s.get("trace_check")))
        if s.get("comm_rows"):
            rows = [_op_row(r, f"{r['total_ms_per_step']:.2f}") for r in s["comm_rows"]]
            out.append(
                "\nCommunication (DDP's gradient all-reduce; gloo runs it on its own thread, so its time overlaps the "
                "backward pass and is not part of the step's share):\n\n"
            )
            out.append(table(["op", "calls", "self ms", "total ms", "input shapes"], rows, align="lrrrl"))
    return "".join(out)


def _roofline_cell(roofline: dict | None) -> str:
    """The step's roofline time over its measured time: the share of the rate the roofs allow."""
    if not roofline:
        return "-"
    step = roofline["step"]
    return f"{100 * step['roofline_ms'] / step['measured_ms']:.0f}%"


def _headroom(layers: list[dict]) -> list[dict]:
    """Measured layers, the most time above their roofline first."""
    timed = [r for r in layers if r["measured_ms"]]
    return sorted(timed, key=lambda r: r["roofline_ms"] - r["measured_ms"])


def _layer_name(r: dict) -> str:
    return f"{r['layer']} {r['kind']} {r['phase']}" if r["kind"] != "adam" else "Adam step"


def _roofline_answer(s: dict) -> str | None:
    r = s.get("roofline")
    if not r:
        return None
    step, far = r["step"], _headroom(r["layers"])[:2]
    gaps = ", ".join(f"{md(_layer_name(x))} ({x['measured_ms']:.1f} ms, its roof {x['roofline_ms']:.2f} ms)" for x in far)
    return (
        f"- {code(s['run'])}: {_roofline_cell(r)} of its roofline ({step['roofline_ms']:.1f} ms allowed, "
        f"{step['measured_ms']:.1f} ms taken); farthest above their roof: {gaps}"
    )


def _roofline_text(s: dict, plotted: bool = False) -> str:
    r = s.get("roofline")
    if not r:
        return ""
    roofs, step = r["roofs"], r["step"]
    bandwidth = ", ".join(f"{level} {roofs['bandwidth_gbs'][level]:.0f}" for level in ("L2", "LLC", "DRAM"))
    capacity = ", ".join(f"{level} {v / 2**20:.1f} MB" for level, v in roofs["capacity_bytes"].items())
    rows = []
    for x in r["layers"]:
        share = f"{100 * x['roofline_ms'] / x['measured_ms']:.0f}%" if x["measured_ms"] else "-"
        rows.append(
            [
                md(x["layer"]),
                md(x["kind"]),
                md(x["phase"]),
                f"{x['flops'] / 1e9:.3f}",
                f"{x['bytes'] / 2**20:.1f}",
                f"{x['intensity']:.1f}",
                md(x["level"]),
                f"{x['roofline_ms']:.3f}",
                f"{x['measured_ms']:.3f}" if x["measured_ms"] else "not in the profile",
                share,
                f"**{md(x['verdict'])}**" if x["verdict"] else md(x["roof"]),
            ]
        )
    rest = step["measured_ms"] - step["matched_measured_ms"]
    return (
        f"\nRoofline ({r['precision']} activations, {roofs['threads']} threads; roofs measured by the profile: compute "
        f"{roofs['compute_gflops']:.0f} GFLOP/s ({md(roofs['compute_source'])}), copy bandwidth {bandwidth} GB/s; cache sizes "
        f"{capacity}). At its roofline the step would take {step['roofline_ms']:.2f} ms; it took {step['measured_ms']:.2f} ms "
        f"({_roofline_cell(r)} of the rate the roofs allow). The layers below account for {step['matched_measured_ms']:.2f} ms; "
        f"the rest, {rest:.2f} ms, is the loss, casts and framework code no layer claims. Bytes: {md(r['bytes_model'])}. "
        "A layer's bound is the roof that sets its roofline time (compute, or the bandwidth of the memory level its bytes "
        "fit in); *overhead* marks one measured far above its roof yet under 0.2 ms, the scale of an op's dispatch.\n\n"
        + table(
            [
                "layer",
                "kind",
                "pass",
                "GFLOP",
                "MB moved",
                "FLOP/byte",
                "fits in",
                "roofline ms",
                "measured ms",
                "of roof",
                "bound",
            ],
            rows,
            align="lllrrrlrrrl",
        )
        + (f"\n![roofline of {md(s['run'])}](roofline-{s['run']}.png)\n" if plotted else "")
    )


def write_roofline_plot(s: dict, folder) -> Path | None:
    """roofline-<run>.png beside the report: roofs as lines, each measured layer a labelled point
    (x: FLOPs per byte, y: achieved GFLOP/s); None without roofline data."""
    r = s.get("roofline")
    points = [x for x in (r or {}).get("layers", []) if x["measured_ms"] and x["flops"]]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roofs = r["roofs"]
    compute = roofs["compute_gflops"]
    xs = [x["intensity"] for x in points]
    lo, hi = min(xs + [0.01]) / 2, max(xs + [100]) * 2
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for level, style in (("L2", ":"), ("LLC", "--"), ("DRAM", "-.")):
        bw = roofs["bandwidth_gbs"][level]
        ax.plot(grid, [min(compute, bw * i) for i in grid], style, color="gray", label=f"{level} {bw:.0f} GB/s")
    ax.axhline(compute, color="black", linewidth=1, label=f"compute {compute:.0f} GFLOP/s ({roofs['compute_source']})")
    colours = {
        "conv": "tab:blue",
        "linear": "tab:green",
        "relu": "tab:orange",
        "pool": "tab:red",
        "dropout": "tab:purple",
        "adam": "tab:brown",
    }
    for x in points:
        rate = x["flops"] / (x["measured_ms"] / 1e3) / 1e9
        marker = "o" if x["phase"] == "forward" else ("s" if x["phase"] == "backward" else "^")
        ax.scatter([x["intensity"]], [rate], color=colours.get(x["kind"], "black"), marker=marker, zorder=3)
        ax.annotate(
            f"{x['layer']} {x['phase'][0]}", (x["intensity"], rate), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    for kind, colour in colours.items():
        if any(x["kind"] == kind for x in points):
            ax.scatter([], [], color=colour, label=kind)
    shapes = (("forward", "o", "circle: forward"), ("backward", "s", "square: backward"))
    for phase, marker, label in shapes:
        if any(x["phase"] == phase for x in points):
            ax.scatter([], [], color="gray", marker=marker, label=label)
    if any(x["phase"] not in ("forward", "backward") for x in points):
        ax.scatter([], [], color="gray", marker="^", label="triangle: optimizer step")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved, the bytes model of the report)")
    ax.set_ylabel("achieved GFLOP/s (measured)")
    ax.set_title(f"Roofline of {s['run']}, {machine_key(s['machine'])}, {roofs['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return atomic.write_bytes(Path(folder) / f"roofline-{s['run']}.png", buffer.getvalue())


def write_kernel_report(path, summaries: list[dict], command: str) -> Path:
    """The kernel report and its roofline plots beside it."""
    path = Path(path)
    plotted = frozenset(s["run"] for s in summaries if write_roofline_plot(s, path.parent) is not None)
    return atomic.write_text(path, render_kernel_report(summaries, command, plotted))


def _memory_text(memory: dict | None) -> str:
    if not memory:
        return ""
    top = ", ".join(f"{code(r['name'][:50])} {r['mb_per_step']:.1f} MB" for r in memory["top_allocating_ops"])
    return (
        f"\nMemory (the allocator's events in the trace): a step peaks {memory['step_peak_mb']:.1f} MB above the level it "
        "starts at (what the step allocates on top of weights, optimizer state and batch, which were allocated before "
        f"profiling began). Allocating most per step (bytes allocated, frees not subtracted): {top}.\n"
    )


def _agreement(check: dict) -> str:
    """What "the same" meant: the file's own resolution (since the cross-check read it exactly), or the
    relative tolerance of an older summary."""
    if "resolution_us" in check:
        return f"to the file's resolution, {1e3 * check['resolution_us']:.1f} ns per event endpoint"
    return f"within {100 * check['tolerance']:.0f}%"


def _trace_check_text(check: dict | None) -> str:

    if not check:
        return ""
    if "skipped" in check:
        return f"\n_Cross-check against the trace file skipped: {md(check['skipped'])}._\n"
    rows = check["rows"]
    agree = sum(r["agree"] for r in rows)
    out = [
        f"\nCross-check: the trace file ({code(check['file'])}, {check['steps']} steps) read by {md(check['reader'])} gives the "
        f"same calls, total and self time per step for {agree} of {len(rows)} convolution rows ({_agreement(check)})"
    ]
    if agree == len(rows):
        return out[0] + ".\n"
    out.append("; where they differ:\n\n")
    cells = []
    for r in rows:
        if r["agree"]:
            continue
        rep, tr = r["report"], r["trace"]
        cells.append(
            [
                _op_name(r["name"], 50),
                _shapes(r["input_shapes"]),
                f"{rep['calls_per_step']:.0f} / {tr['calls_per_step']:.0f}",
                f"{rep['total_ms_per_step']:.2f} / {tr['total_ms_per_step']:.2f}",
                f"{rep['self_ms_per_step']:.2f} / {tr['self_ms_per_step']:.2f}",
                md(r["worst"].replace("_", " ")),
            ]
        )
    out.append(table(["op", "input shapes", "calls report / trace", "total ms", "self ms", "largest gap"], cells, align="llrrrl"))
    out.append(
        "\nA gap means the in-process table and the file disagree on the same events: a row the file files under other "
        "input shapes, or self time the table assigns differently where ops of two threads overlap.\n"
    )
    return "".join(out)
