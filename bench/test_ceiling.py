"""The machine's own ceiling in this run: large matmuls and a large convolution, per device and precision.

Every other benchmark's GFLOP/s is reported as a share of the best of these per device and precision
(bench_report.ceiling_for). A matmul alone is no ceiling for these nets: oneDNN's convolutions ran
faster than torch's BLAS matmul on this project's CPUs, so the best of both is.
"""

import pytest
import torch
from grid import HAVE_CUDA, NO_CUDA

from mnist_models.core.bench_row import BenchIdentity
from mnist_models.core.variants import Variant

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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("device, precision, n", _cases())
def test_matmul_ceiling(benchmark, device, precision, n):
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])

    def matmul():
        out = a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    matmul()  # first-call allocation and library start-up, outside the timing
    benchmark.group = "ceiling"
    benchmark.extra_info.update(
        **ceiling_identity(device, precision, f"matmul-n{n}", n).to_info(),
        tf32=bool(HAVE_CUDA and torch.backends.cuda.matmul.allow_tf32),
    )
    out = benchmark(matmul)
    assert out.shape == (n, n) and torch.isfinite(out[:4, :4].float()).all()
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["gflops_per_s"] = 2 * n**3 / benchmark.stats.stats.median / 1e9


# A conv layer in the nets' style (3x3, same padding), large enough for oneDNN's / cuDNN's best kernels:
# 64 -> 64 channels on 56x56 images, in channels_last (the layout both libraries prefer).
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
    batch, channels, side = CONV[device], 64, 56
    dtype = DTYPES[precision]
    x = torch.randn(batch, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(
        device=device, dtype=dtype, memory_format=torch.channels_last
    )

    @torch.inference_mode()
    def convolve():
        out = conv(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    convolve()  # oneDNN / cuDNN pick and prepare their kernel on the first call
    benchmark.group = "ceiling"
    benchmark.extra_info.update(**ceiling_identity(device, precision, f"conv-b{batch}", batch).to_info())
    out = benchmark(convolve)
    assert out.shape == x.shape and torch.isfinite(out[:1, :4].float()).all()
    if getattr(benchmark, "stats", None):
        flops = 2 * channels * 9 * channels * side * side * batch
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.median / 1e9
