"""The conv-kernel report: one section per profiled run, rendered from the stored profile summaries
(profiling/profiler.py writes them)."""

from __future__ import annotations

from ..system.errors import UsageError
from ..system.machine import mixed_machines_warning
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


def render_kernel_report(summaries: list[dict], command: str) -> str:

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
    out.append(
        "\nEach section is one `mnist-bench profile` run (a schedule of wait/warmup/active steps; times are per step, averaged over the active "
        "steps, with the profiler's own overhead: compare shares, and take absolute speed from the benchmark report). "
        "Convolution FLOPs come from the nets' own per-layer count (`layer_flops`), not the profiler, which counts no backward or "
        "compiled convolution: backward = 2x forward, except the first layer (1x: images need no gradient). "
        "Rows that only wrap other rows (aten::conv2d, autograd nodes, any row whose self time is under half its total) are left out. "
        "Under torch.compile, an `inductor graph` row (the trace's `## Call CompiledFxGraph` with the graph's hash) is the time of inductor's generated kernels (fused ReLU, pooling, "
        "their backward and the optimizer's elementwise work); convolutions stay library calls (extern kernels).\n"
    )
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
            ]
        )
    out.append("\n## Overview\n\n")
    out.append(table(["run", "profiled step", "conv share", "largest non-conv row", "step memory peak"], overview, align="lrrlr"))
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


def _memory_text(memory: dict | None) -> str:
    if not memory:
        return ""
    top = ", ".join(f"{code(r['name'][:50])} {r['mb_per_step']:.1f} MB" for r in memory["top_allocating_ops"])
    return (
        f"\nMemory (the allocator's events in the trace): a step peaks {memory['step_peak_mb']:.1f} MB above the level it "
        "starts at (what the step allocates on top of weights, optimizer state and batch, which were allocated before "
        f"profiling began). Allocating most per step (bytes allocated, frees not subtracted): {top}.\n"
    )


def _trace_check_text(check: dict | None) -> str:

    if not check:
        return ""
    if "skipped" in check:
        return f"\n_Cross-check against the trace file skipped: {md(check['skipped'])}._\n"
    rows = check["rows"]
    agree = sum(r["agree"] for r in rows)
    out = [
        f"\nCross-check: the trace file ({code(check['file'])}, {check['steps']} steps) read by {md(check['reader'])} gives the "
        f"same calls, total and self time per step for {agree} of {len(rows)} convolution rows (within {100 * check['tolerance']:.0f}%)"
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
