"""The profiler's trace file read back: a cross-check of the kernel report, and a step's memory.

The conv-kernel tables come from the profiler's in-process aggregation (`key_averages`). The same
events land in `*.pt.trace.json`, the file TensorBoard and Perfetto show. `cross_check` reads that
file with HolisticTraceAnalysis (HTA: `pip install -e ".[traces]"`), rebuilds per op and input
shape the calls, total and self time per profiled step, and compares them with the report's
convolution rows, saying where the two disagree. `step_memory` reads the allocator's memory events
from the same file (plain JSON, no HTA needed): the peak a step reaches above its starting level.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

TRACES_MISSING = "holistictraceanalysis is not installed (pip install -e '.[traces]')"
# The trace stores microseconds with three decimals: each event's start and end are exact to a
# nanosecond, less the float64 spacing at the trace's clock values (about 1 ns at 5.7e12 us). HTA
# by default rounds them inward to whole microseconds (ceil the start, floor the end), which shifts a
# row's self time by up to 2 us per child per call: a 2.5% disagreement between two readings of the
# same events, at random. Read at the file's own resolution, the two readings agree to the
# nanosecond, so a row agrees when it differs by no more than that resolution allows: two endpoints
# for each call and each direct child inside it.
NS_ROUNDING_ENV = "HTA_DISABLE_NS_ROUNDING"
FILE_RESOLUTION_US = 1e-3


def trace_files(run_dir: Path, worker: str) -> list[Path]:
    return sorted(Path(run_dir).glob(f"{worker}*.pt.trace.json"), key=lambda p: p.stat().st_mtime)


def _freeze(value):
    """Lists (of lists: a collective's list of tensors) as tuples, so that shapes can be dict keys."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


def _shape_key(dims) -> tuple:
    """The first three non-empty input shapes, as the kernel summary keeps them."""
    shapes = [_freeze(d) for d in (dims if isinstance(dims, list) else []) if isinstance(d, list) and d]
    return tuple(shapes[:3])


def read_ops(path: Path):
    """CPU ops of a trace file as a pandas frame (name, ts, dur, tid, shapes, self_us), parsed by HTA,
    and the number of profiler steps the file covers."""
    try:
        from hta.common.trace import parse_trace_file
        from hta.configs.parser_config import ParserConfig
    except ImportError:
        raise ImportError(TRACES_MISSING) from None
    logging.getLogger("hta").setLevel(logging.ERROR)  # HTA logs a warning per parsed file
    config = ParserConfig(ParserConfig.ARGS_MINIMUM + ParserConfig.ARGS_INPUT_SHAPE)
    before = os.environ.get(NS_ROUNDING_ENV)
    os.environ[NS_ROUNDING_ENV] = "1"  # read at the file's nanosecond resolution (HTA reads the flag per parse)
    try:
        with warnings.catch_warnings():  # HTA 0.5.0 uses pandas APIs that newer pandas deprecates: not the user's concern
            warnings.simplefilter("ignore")
            _, df, symbols = parse_trace_file(str(path), config)
    finally:
        if before is None:
            os.environ.pop(NS_ROUNDING_ENV, None)
        else:
            os.environ[NS_ROUNDING_ENV] = before
    names = dict(enumerate(symbols.get_sym_table()))
    df = df.assign(name=df["name"].map(names), cat=df["cat"].map(names))
    steps = int(df["name"].str.startswith("ProfilerStep#").sum())
    ops = df[df["cat"] == "cpu_op"].sort_values(["tid", "ts", "dur"], ascending=[True, True, False]).copy()
    ops["shapes"] = [_shape_key(json.loads(d) if isinstance(d, str) else d) for d in ops.get("input_dims", [None] * len(ops))]
    ops["self_us"], ops["children"] = _self_times(ops)
    return ops, max(steps, 1)


def _self_times(ops) -> tuple[list[float], list[int]]:
    """Each op's duration minus that of the ops directly inside it on the same thread (the profiler's
    definition of self time), from the nesting of their time spans; and how many such children it has."""
    self_us = ops["dur"].astype(float).tolist()
    children = [0] * len(self_us)
    stack: list[tuple[int, float, int]] = []  # (position, end, tid) of the ops still open
    for i, (ts, dur, tid) in enumerate(zip(ops["ts"], ops["dur"], ops["tid"])):
        while stack and (stack[-1][2] != tid or ts >= stack[-1][1]):
            stack.pop()
        if stack:
            self_us[stack[-1][0]] -= dur
            children[stack[-1][0]] += 1
        stack.append((i, ts + dur, tid))
    return self_us, children


def resolution_us(ops) -> float:
    """How exactly the file gives one event endpoint: its three decimals, or the float64 spacing at its
    largest clock value, whichever is coarser (both, to be safe)."""
    latest = float(ops["ts"].max()) if len(ops) else 0.0
    return FILE_RESOLUTION_US + 2 * math.ulp(latest)


def cross_check(summary: dict, trace: Path) -> dict:
    """The kernel summary's convolution rows against the trace file: per row, both readings and
    whether they agree within what the file's resolution allows (calls must agree exactly)."""
    ops, steps = read_ops(trace)
    resolution = resolution_us(ops)
    grouped = defaultdict(lambda: [0, 0.0, 0.0, 0])
    for name, shapes, dur, self_us, children in zip(ops["name"], ops["shapes"], ops["dur"], ops["self_us"], ops["children"]):
        cell = grouped[(name, shapes)]
        cell[0] += 1
        cell[1] += float(dur)
        cell[2] += self_us
        cell[3] += children
    rows = []
    for row in summary["conv_rows"]:
        key = (row["name"], _freeze(row["input_shapes"]))
        calls, total_us, self_us, children = grouped.get(key, (0, 0.0, 0.0, 0))
        seen = {
            "calls_per_step": calls / steps,
            "total_ms_per_step": total_us / steps / 1e3,
            "self_ms_per_step": self_us / steps / 1e3,
        }
        allowed = {  # ms per step: two endpoints per event, each exact to the file's resolution
            "calls_per_step": 0.0,
            "total_ms_per_step": 2 * resolution * calls / steps / 1e3,
            "self_ms_per_step": 2 * resolution * (calls + children) / steps / 1e3,
        }
        excess = {k: abs(row[k] - seen[k]) - allowed[k] for k in seen}
        diffs = {k: _relative(row[k], seen[k]) for k in seen}
        rows.append(
            {
                "name": row["name"],
                "input_shapes": row["input_shapes"],
                "report": {k: row[k] for k in seen},
                "trace": seen,
                "allowed": allowed,
                "agree": all(e <= 1e-12 for e in excess.values()),
                "worst": max(diffs, key=diffs.get),
            }
        )
    return {"reader": "HolisticTraceAnalysis", "file": trace.name, "steps": steps, "resolution_us": resolution, "rows": rows}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if max(abs(a), abs(b)) > 0 else 0.0


# Allocation helpers: the memory they allocate is their caller's output or workspace.
_ALLOCATORS = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::resize_",
    "aten::new_empty",
    "aten::new_empty_strided",
}


# kineto's "Device Type" of a memory event: the CPU's allocator and CUDA's keep separate totals.
DEVICE_TYPE = {"cpu": 0, "cuda": 1}


def step_memory(trace: Path, top: int = 5, device: str = "cpu") -> dict | None:
    """From the allocator's `[memory]` events (profile_memory=True) of `device` only (a CUDA profile
    also holds the host allocator's events, whose totals are another allocator's): the highest total
    allocated during each profiled step above its level when the step began, the highest level reached,
    and the ops that allocate most per step (an allocation inside aten::empty and its kin counts for
    the op that called it). None when the trace holds no memory events."""
    events = json.loads(Path(trace).read_text()).get("traceEvents", [])
    steps = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if str(e.get("name", "")).startswith("ProfilerStep#") and "dur" in e
    )
    memory = sorted(
        (e["ts"], e["args"]["Total Allocated"], e["args"].get("Bytes", 0), e.get("tid"))
        for e in events
        if e.get("name") == "[memory]"
        and "Total Allocated" in e.get("args", {})
        and e["args"].get("Device Type", 0) == DEVICE_TYPE.get(device, 0)
    )
    if not steps or not memory:
        return None
    peaks, highest = [], 0
    for start, end in steps:
        before = [total for ts, total, _, _ in memory if ts < start]
        during = [total for ts, total, _, _ in memory if start <= ts <= end]
        if during:
            base = before[-1] if before else during[0]
            peaks.append(max(during) - base)
            highest = max(highest, max(during))
    if not peaks:
        return None
    allocated = _allocations_by_op(events, [m for m in memory if any(s <= m[0] <= e for s, e in steps)])
    ranked = sorted(allocated.items(), key=lambda kv: -kv[1])[:top]
    return {
        "step_peak_mb": max(peaks) / 2**20,
        "highest_allocated_mb": highest / 2**20,
        "steps": len(peaks),
        "top_allocating_ops": [{"name": name, "mb_per_step": b / len(peaks) / 2**20} for name, b in ranked],
    }


def _allocations_by_op(events: list[dict], memory: list[tuple]) -> dict[str, int]:
    """Bytes allocated (frees left out) per op: each memory event goes to the innermost op open on
    its thread at that moment, allocation helpers skipped."""
    ops_by_thread = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and "dur" in e:
            ops_by_thread[e.get("tid")].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    totals: dict[str, int] = defaultdict(int)
    by_thread = defaultdict(list)
    for ts, _, nbytes, tid in memory:
        if nbytes > 0:
            by_thread[tid].append((ts, nbytes))
    for tid, allocations in by_thread.items():
        ops = sorted(ops_by_thread.get(tid, []), key=lambda o: (o[0], -o[1]))
        stack: list[tuple[float, float, str]] = []
        i = 0
        for ts, nbytes in allocations:  # sorted by time: a sweep with the stack of open ops
            while i < len(ops) and ops[i][0] <= ts:
                while stack and stack[-1][1] < ops[i][0]:
                    stack.pop()
                stack.append(ops[i])
                i += 1
            while stack and stack[-1][1] < ts:
                stack.pop()
            owner = next((name for _, end, name in reversed(stack) if name not in _ALLOCATORS and end >= ts), "(outside any op)")
            totals[owner] += nbytes
    return totals
