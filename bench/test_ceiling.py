"""The machine's own ceiling in this run: large matmuls and a large convolution, per device and
precision, and the copy bandwidth of each memory level (the roofs of the roofline, core/roofline.py).

Every other benchmark's GFLOP/s is reported as a share of the best of these per device and precision
(bench_report.ceiling_for). A matmul alone is no ceiling for these nets: oneDNN's convolutions ran
faster than torch's BLAS matmul on this project's CPUs, so the best of both is.
"""

import pytest
import torch
from grid import HAVE_CUDA, NO_CUDA

from mnist_models.core.bench_row import BenchIdentity
from mnist_models.core.roofline import bandwidth_sizes, conv_op, copy_op, matmul_op
from mnist_models.core.timing import identify
from mnist_models.core.variants import Variant
from mnist_models.system.machine import cache_capacity, set_threads

# The ceiling is the best rate over a few sizes: on a CPU a 2048 fp32 matmul can be memory-bound
# (seen here: 213 GFLOP/s, while the nets' own batch-100 forward reached 285), a smaller one fits
# in cache. bf16 on a CPU without AVX-512 BF16 / AMX has no fast kernel (~100x slower than fp32),
# so its sizes stay small enough to take about a second there.
SIZES = {
    ("cpu", "fp32"): (512, 1024, 2048),
    ("cpu", "bf16"): (512, 1024),
    ("cuda", "fp32"): (4096, 8192),
    ("cuda", "bf16"): (4096, 8192),
    ("cuda", "fp16"): (4096, 8192),
}


def _cases() -> list:
    cases = []
    for (device, precision), sizes in SIZES.items():
        for n in sizes:
            marks = [NO_CUDA, pytest.mark.cuda] if device == "cuda" else []
            if (device, precision, n) == ("cpu", "fp32", 1024) or (device == "cuda" and n == 8192):
                marks.append(pytest.mark.quick)
            cases.append(pytest.param(device, precision, n, id=f"{device}-{precision}-n{n}", marks=marks))
    return cases


def ceiling_identity(device: str, precision: str, op: str, batch: int) -> BenchIdentity:
    """torch's own op at the session's threads: no net, no variant beyond device and precision."""
    return BenchIdentity(
        suite="ceiling", variant=Variant(device, precision=precision), batch=batch, threads=torch.get_num_threads(), op=op
    )


@pytest.mark.parametrize("device, precision, n", _cases())
def test_matmul_ceiling(benchmark, device, precision, n):
    matmul, flops = matmul_op(n, precision, device)
    matmul()  # first-call allocation and library start-up, outside the timing
    identify(
        benchmark,
        ceiling_identity(device, precision, f"matmul-n{n}", n),
        tf32=bool(HAVE_CUDA and torch.backends.cuda.matmul.allow_tf32),
    )
    out = benchmark(matmul)
    assert out.shape == (n, n) and torch.isfinite(out[:4, :4].float()).all()
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.median / 1e9


# The ceiling's convolution (core/roofline.conv_op: 64 -> 64 channels, 3x3, 56x56, channels_last), per device.
CONV = {"cpu": 32, "cuda": 256}  # batch


def _conv_cases() -> list:
    cases = []
    for device, precision in (("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")):
        marks = [NO_CUDA, pytest.mark.cuda] if device == "cuda" else []
        if precision == "fp32":
            marks.append(pytest.mark.quick)
        cases.append(pytest.param(device, precision, id=f"{device}-{precision}-conv", marks=marks))
    return cases


@pytest.mark.parametrize("device, precision", _conv_cases())
def test_conv_ceiling(benchmark, device, precision):
    batch = CONV[device]
    convolve, flops = conv_op(precision, device, batch)
    convolve()  # oneDNN / cuDNN pick and prepare their kernel on the first call
    identify(benchmark, ceiling_identity(device, precision, f"conv-b{batch}", batch))
    out = benchmark(convolve)
    assert out.shape == (batch, 64, 56, 56) and torch.isfinite(out[:1, :4].float()).all()
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.median / 1e9


# Bandwidth roofs (core/roofline.py): a streaming copy sized to sit inside L2 (all the threads' L2
# together), inside the last-level cache, and far beyond it; bytes = source read + destination written.
# At the session's threads and at one thread: a single core's share of the bandwidth is a roof too.
@pytest.mark.parametrize("threads", [pytest.param(0, marks=pytest.mark.quick), 1], ids=["", "t1"])
@pytest.mark.parametrize("level", ["L2", "LLC", "DRAM"], ids=lambda level: f"cpu-copy-{level}")
def test_bandwidth_ceiling(benchmark, level, threads):
    before = set_threads(threads) if threads else None
    try:
        size = bandwidth_sizes(cache_capacity(torch.get_num_threads()))[level]
        call, moved = copy_op(size)
        call()  # first touch of both tensors, outside the timing
        identify(
            benchmark, ceiling_identity("cpu", "fp32", f"copy-{level}", None), bytes_per_call=moved, threads_pinned=bool(threads)
        )
        out = benchmark(call)
    finally:
        if before is not None:
            set_threads(before)
    assert 2 * out.numel() * out.element_size() == moved
