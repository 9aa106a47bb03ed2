"""The machine's own ceiling in this run: large matmuls, per device and precision.

Every other benchmark's GFLOP/s is reported as a share of these.
"""

import pytest
import torch

from grid import HAVE_CUDA, NO_CUDA

# bf16 on a CPU without AVX-512 BF16 / AMX has no fast kernel (~100x slower than fp32 here): a
# smaller problem keeps that measurement to about a second.
SIZES = {("cpu", "fp32"): 2048, ("cpu", "bf16"): 512, ("cuda", "fp32"): 8192, ("cuda", "bf16"): 8192, ("cuda", "fp16"): 8192}
CASES = [
    pytest.param("cpu", "fp32", id="cpu-fp32", marks=pytest.mark.quick),
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "fp32", id="cuda-fp32", marks=NO_CUDA),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=NO_CUDA),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=NO_CUDA),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("device, precision", CASES)
def test_matmul_ceiling(benchmark, device, precision):
    n = SIZES[device, precision]
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])

    def matmul():
        out = a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    matmul()  # first-call allocation and library start-up, outside the timing
    benchmark.group = "ceiling"
    benchmark.extra_info.update(suite="ceiling", device=device, precision=precision, n=n, threads=torch.get_num_threads(),
                                tf32=bool(HAVE_CUDA and torch.backends.cuda.matmul.allow_tf32))
    out = benchmark(matmul)
    assert out.shape == (n, n) and torch.isfinite(out[:4, :4].float()).all()
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["gflops_per_s"] = 2 * n**3 / benchmark.stats.stats.median / 1e9
