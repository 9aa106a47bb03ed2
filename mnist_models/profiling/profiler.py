"""torch.profiler runs -> TensorBoard traces and the per-run summaries the kernel report renders.

Profiling is its own mode (never timed while profiling): a schedule of wait / warmup / active
steps, shapes, FLOPs and memory recorded, traces written by tensorboard_trace_handler into one run
directory per model and variant, so `tensorboard --logdir reports/traces` lists them side by side.

FLOPs: the profiler counts only some forward ops (mm/addmm here), none of the backward or the
compiled convolutions, so convolution FLOPs come from the nets' own per-layer count
(`layer_flops`), looked up by (input shape, weight shape). A backward convolution costs 2x its
forward (input and weight gradients), except the first layer, whose input needs no gradient (1x).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..core.data import load_dataset
from ..core.harness import build, real_batch, warm_up
from ..core.nets import MODELS
from ..core.roofline import RoofMeasurement, measure_roofs
from ..core.variants import MODES, Variant, device_name, render_tag
from ..runs.config import check_choice, check_threads
from ..scale.job import SOLO, Solo
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import busy_check, cache_capacity, evidence_dir, machine_info, native_bf16, set_threads
from ..system.paths import shown
from .roofline import roofline_summary

# This machine's evidence folder: a profile made here never replaces another machine's summary.
DEFAULT_TRACE_DIR = evidence_dir() / "traces"
DEFAULT_SUMMARY_DIR = evidence_dir() / "kernels"
DEFAULT_KERNEL_REPORT = evidence_dir() / "conv-kernels.md"
# Rows that only wrap other rows (their time is their children's) are left out of the tables.
_WRAPPERS = re.compile(
    r"^(ProfilerStep|autograd::engine|Optimizer\.|CompiledFunction|Torch-Compiled Region|TorchDynamo|"
    r"aten::(conv2d|convolution|_convolution|linear|max_pool2d|cross_entropy_loss|to|_to_copy|empty.*)$|"
    r".*Backward\d*$)"
)  # autograd nodes: their time is the backward kernels beneath
_CONV = re.compile(r"conv|cudnn|fprop|dgrad|wgrad|implicit_gemm|winograd", re.IGNORECASE)
# DDP's gradient all-reduce: c10d's op, and the backend's own work (gloo on CPU, nccl kernels on CUDA).
_COMM = re.compile(r"all_?reduce|allreduce|gloo|nccl|c10d", re.IGNORECASE)


@dataclass(frozen=True)
class ProfileConfig:
    model: str = "simple"
    mode: str = "train"  # a whole train step, or forward only
    variant: Variant = Variant("auto")  # device 'auto' resolves when the profile starts
    batch_size: int = 100
    wait: int = 1
    warmup: int = 2
    active: int = 3
    out_dir: str = str(DEFAULT_TRACE_DIR)
    threads: int | None = None
    ranks: int = 1  # DDP ranks (mnist-bench profile --nproc N); batch_size is then per rank

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("mode", self.mode, MODES)
        if not isinstance(self.variant, Variant):
            raise UsageError(f"a profile's variant is a Variant, got {type(self.variant).__name__}")
        for name in ("batch_size", "active"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be positive")
        if self.wait < 0 or self.warmup < 0:
            raise UsageError("wait and warmup steps cannot be negative")
        check_threads(self.threads)
        if self.ranks < 1:
            raise UsageError(f"ranks must be positive, got {self.ranks}")

    def run_name(self, variant: Variant) -> str:
        """One TensorBoard run per model + (resolved) variant, readable in its run picker: simple-train-cpu-eager-fp32-b100."""
        return render_tag(
            model=self.model,
            mode=self.mode,
            **variant.fields(),
            ranks=self.ranks if self.ranks > 1 else None,
            batch_size=self.batch_size,
        )


def _conv_flops_by_shape(model, batch: int, mode: str) -> dict[tuple, dict]:
    """(input shape, weight shape) -> forward and backward FLOPs of that convolution."""
    table = {}
    convs = [layer for layer in model.layer_flops(batch) if layer["kind"] == "Conv2d"]
    for i, layer in enumerate(convs):
        key = (tuple(layer["input_shape"]), tuple(layer["weight_shape"]))
        backward = layer["flops"] * (1 if i == 0 else 2) if mode == "train" else 0
        table[key] = {"forward": layer["flops"], "backward": backward, "layer": layer["name"]}
    return table


def _row_flops(name: str, shapes: list, conv_flops: dict) -> tuple[int | None, str | None]:
    """FLOPs of one call of a convolution row, from its recorded input shapes."""
    shapes = [tuple(s) for s in shapes if isinstance(s, (list, tuple))]
    if "backward" in name.lower() and len(shapes) >= 3:  # (grad_output, input, weight, ...)
        hit = conv_flops.get((shapes[1], shapes[2]))
        return (hit["backward"], hit["layer"]) if hit else (None, None)
    if len(shapes) >= 2:  # (input, weight, ...)
        hit = conv_flops.get((shapes[0], shapes[1]))
        return (hit["forward"], hit["layer"]) if hit else (None, None)
    return None, None


def ops_and_kernels(events, on_cuda: bool) -> tuple[list, list]:
    """The operator rows of a profile, and (on CUDA) its device-side rows apart.

    On CUDA, torch gives each kernel's time to the CPU op that launched it (that op's self device
    time), and lists the kernel again as a row of its own, and GPU-side annotations (ProfilerStep's
    device span, record_function ranges) again: summing every row counts a step two or three times
    and lists each convolution twice. Operator rows are the CPU-side events; the kernels are kept
    apart, for the table of which kernels ran. On CPU every row is an operator row."""
    if not on_cuda:
        return list(events), []
    from torch.autograd import DeviceType

    ops = [e for e in events if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]
    device = [e for e in events if getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU]
    kernels = [e for e in device if not _ANNOTATION.match(e.key)]
    return ops, kernels


# GPU-side spans of annotations (the profiler step, record_function ranges): not kernels.
_ANNOTATION = re.compile(r"^(ProfilerStep#?\d*|## .* ##|\[.*\])$|^(Optimizer|autograd|DistributedDataParallel)[.:]")


def kernel_rows(kernels, active: int, step_us: float) -> list[dict]:
    """The device kernels by time, each once: name, calls and time per step, share of the step."""
    rows = [
        {
            "name": k.key,
            "calls_per_step": k.count / active,
            "ms_per_step": float(k.self_device_time_total) / active / 1e3,
            "share": float(k.self_device_time_total) / active / step_us if step_us else 0.0,
            "convolution": bool(_CONV_KERNEL.search(k.key)),
        }
        for k in kernels
        if float(k.self_device_time_total) > 0
    ]
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:20]


# cuDNN / CUTLASS convolution kernels (implicit GEMM, Winograd, FFT, split-K reductions of a weight
# gradient); not inductor's fused elementwise kernels ("triton_poi_fused_convolution_relu_0"), whose
# names say what they follow, not what they compute.
_CONV_KERNEL = re.compile(
    r"^(?!triton_)(.*(fprop|dgrad|wgrad|implicit_?gemm|winograd|convolve|conv2d|fft|cudnn).*|.*splitKreduce.*)$", re.IGNORECASE
)


def summarise(prof, config: ProfileConfig, variant: Variant, model, roofs: RoofMeasurement | None = None) -> dict:
    """Per-row tables from a finished profiler: convolution rows and the top other rows; with the
    machine's `roofs`, each layer against its roofline."""
    on_cuda = variant.device == "cuda"
    events, kernels = ops_and_kernels(prof.key_averages(group_by_input_shape=True), on_cuda)

    def self_us(e) -> float:
        return float(e.self_device_time_total if on_cuda else e.self_cpu_time_total)

    def total_us(e) -> float:
        return float(e.device_time_total if on_cuda else e.cpu_time_total)

    # Time of one step as the profiler saw it. On CUDA each kernel's time is counted once, on the op that
    # launched it (its self device time); the kernel rows and the GPU-side annotations, which repeat it,
    # are not operator rows (ops_and_kernels).
    step_us = sum(self_us(e) for e in events) / config.active
    conv_flops = _conv_flops_by_shape(model, config.batch_size, config.mode)
    convs, comms, others, own = [], [], [], []
    for e in events:
        shapes = [list(s) for s in (e.input_shapes or []) if s]
        if self_us(e) > 0 and not _COMM.search(e.key):
            # Every op's own time, for the roofline (self times never count a child twice).
            own.append({"name": e.key, "self_ms_per_step": self_us(e) / config.active / 1e3, "input_shapes": shapes[:3]})
        # Keep the rows that do the work: a wrapper's time is mostly its children's. Communication
        # rows stay whatever their self time: c10d's op only enqueues the backend's work.
        comm = bool(_COMM.search(e.key))
        if not comm and (self_us(e) <= 0 or _WRAPPERS.match(e.key) or self_us(e) < 0.5 * total_us(e)):
            continue
        row = {
            "name": e.key,
            "calls_per_step": e.count / config.active,
            "self_ms_per_step": self_us(e) / config.active / 1e3,
            "total_ms_per_step": total_us(e) / config.active / 1e3,
            "share": self_us(e) / config.active / step_us if step_us else 0.0,
            "input_shapes": shapes[:3],
        }
        if _CONV.search(e.key):
            flops, layer = _row_flops(e.key, shapes, conv_flops)
            if flops is not None:
                row["layer"] = own[-1]["layer"] = layer
                row["flops_per_call"] = flops
                row["gflops_per_s"] = flops * e.count / (self_us(e) / 1e6) / 1e9
            convs.append(row)
        elif comm:
            comms.append(row)
        else:
            others.append(row)
    convs.sort(key=lambda r: -r["self_ms_per_step"])
    others.sort(key=lambda r: -r["self_ms_per_step"])
    conv_share = sum(r["share"] for r in convs)
    roofline = None
    if roofs is not None:
        precision = variant.precision
        roofline = roofline_summary(model, config.batch_size, precision, config.mode, own, step_us / 1e3, roofs)
    return {
        "kind": "mnist-bench profile",
        "run": config.run_name(variant),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "variant": variant.fields() | {"tag": variant.tag},
        "device_name": device_name(variant.device),
        "timeline": "CUDA device time" if on_cuda else "CPU self time",
        "step_ms": step_us / 1e3,
        "conv_share": conv_share,
        "conv_rows": convs,
        "kernel_rows": kernel_rows(kernels, config.active, step_us),
        "comm_rows": sorted(comms, key=lambda r: -r["total_ms_per_step"]),
        "other_rows": others[:8],
        "flop_source": "per-layer count from the nets' own layer shapes (mnist_models.core.nets.layer_flops)",
        "machine": machine_info(),
        "roofline": roofline,
    }


# Lines the profiler's C++ side (kineto, c10) writes to the process's stderr on every CPU profile, which
# Python's warnings filters cannot catch: the CUDA build's no-GPU complaint (it only means that no GPU
# activity can be traced), kineto's start/stop markers, and the allocator's note that memory held
# before profiling has no recorded size (the memory paragraph of the report says what that means).
KINETO_GPU_NOISE = "gpuGetDeviceCount failed"
PROFILER_NOISE = (KINETO_GPU_NOISE, "SyncActivityProfilerHandler.cpp", "allocated before the profiling started")


@contextlib.contextmanager
def _without_profiler_noise():
    """Hold the process's stderr (file descriptor 2) while the profiler runs, then pass on every line
    but PROFILER_NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in PROFILER_NOISE):
                    print(line, file=sys.stderr)


def profile(config: ProfileConfig, log=print, job: Solo = SOLO) -> tuple[Path, dict | None]:
    """Profile one model + variant; returns the trace run directory and the kernel summary.

    In a DDP `job` (scale/job.py, its process group started) every rank profiles its own DDP step and writes
    its own trace into the one run folder (TensorBoard shows a worker per rank); rank 0 returns the
    summary, the others None.
    """
    from torch.profiler import ProfilerActivity, schedule, tensorboard_trace_handler

    variant = config.variant.resolved()
    threads = config.threads or job.threads()
    if threads is not None:
        set_threads(threads)
    main = job.is_main
    run_name = config.run_name(variant)
    run_dir = Path(config.out_dir) / run_name
    if main:
        atomic.ensure_writable_dir(run_dir)
        # Old trace files of the same run would show up as extra workers in TensorBoard.
        for old in run_dir.glob("*.pt.trace.json*"):
            old.unlink()
    job.barrier()  # no rank writes its trace before the old ones are gone
    busy = busy_check()

    # Real digits; the op mix does not depend on the dataset.
    x, y = real_batch(load_dataset("mnist-5k").train, config.batch_size, variant)
    work = build(config.model, variant, config.mode, wrap=job.wrapper(variant.device))
    run = work.call_on(x, y)
    seconds = warm_up(run)  # compile and first-call costs stay out of the trace
    if main:
        log(f"warm-up (compile included) {seconds:.1f} s for the first call; profiling {run_name}")

    # The roofs at the profile's threads, measured before it (a few seconds; CPU, one process only:
    # under DDP the other ranks would be computing beside the measurement).
    roofs = None
    if variant.device == "cpu" and job.world_size == 1:
        threads_now = torch.get_num_threads()
        roofs = measure_roofs(variant.precision, cache_capacity(threads_now), threads_now, native_bf16())
        log(
            f"roofs: {roofs.roofs.compute_gflops:.0f} GFLOP/s ({roofs.roofs.compute_source}), bandwidth "
            + ", ".join(f"{k} {v:.0f} GB/s" for k, v in roofs.roofs.bandwidth_gbs.items())
        )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if variant.device == "cuda" else [])
    worker = run_name + (f"-rank{job.index}" if job.world_size > 1 else "")
    wall = []
    with (
        _without_profiler_noise(),
        torch.profiler.profile(
            activities=activities,
            schedule=schedule(wait=config.wait, warmup=config.warmup, active=config.active, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(run_dir), worker_name=worker),
            record_shapes=True,
            with_flops=True,
            profile_memory=True,
        ) as prof,
    ):
        for _ in range(config.wait + config.warmup + config.active):
            t = time.perf_counter()
            run()
            wall.append(time.perf_counter() - t)
            prof.step()
    # Every rank's trace is written: all leave together, so none tears its connections down (and
    # exits) while another still reads them (seen: rank 0 aborted by SIGABRT).
    job.finish()
    if not main:
        return run_dir, None
    summary = summarise(prof, config, variant, work.model, roofs)
    summary["wall_ms_per_step_while_profiling"] = 1e3 * statistics.median(wall[-config.active :])
    summary["busy_before_start"] = busy
    summary["trace_dir"] = shown(run_dir)
    summary |= read_back(run_dir, worker, summary)
    return run_dir, summary


def read_back(run_dir: Path, worker: str, summary: dict) -> dict:
    """What the trace file itself says: a step's memory, and the cross-check of the conv rows (HTA)."""
    from .trace_check import cross_check, step_memory, trace_files

    traces = trace_files(run_dir, worker)
    if not traces:
        return {"memory": None, "trace_check": {"skipped": f"no trace file of {worker} in {shown(run_dir)}"}}
    try:
        check = cross_check(summary, traces[-1])
    except ImportError as exc:
        check = {"skipped": str(exc)}
    device = (summary.get("variant") or {}).get("device", "cpu")
    return {"memory": step_memory(traces[-1], device=device), "trace_check": check}


# ---------------------------------------------------------------------------------------------
# The conv-kernel report: one section per profiled run, rendered from the stored summaries.


def save_summary(summary: dict, summary_dir: Path = DEFAULT_SUMMARY_DIR) -> Path:
    return atomic.write_json(Path(summary_dir) / f"{summary['run']}.json", summary)


def load_summaries(summary_dir: Path = DEFAULT_SUMMARY_DIR) -> list[dict]:
    import json

    summaries = []
    for path in sorted(Path(summary_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("kind") == "mnist-bench profile":
            summaries.append(data)
    order = {"simple": 0, "deep": 1}
    return sorted(
        summaries,
        key=lambda s: (
            order.get(s["config"]["model"], 2),
            s["config"]["mode"],
            s["variant"]["device"],
            s["variant"]["compile"] != "off",
            s["variant"]["precision"] != "fp32",
            s["variant"]["channels_last"],
        ),
    )
