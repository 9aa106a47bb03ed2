"""Forward pass (inference) under torch.inference_mode: both nets, batch 1 / 100 / 1000, per variant."""

import pytest
import torch

from conftest import describe, make_batch, rates, warm_up
from grid import forward_cases
from mnist_models.nets import build_model
from mnist_models.variants import make_forward


@pytest.mark.parametrize("case", forward_cases())
def test_forward(benchmark, case, real_images):
    v = case.variant
    torch.manual_seed(0)
    model = v.place(build_model(case.model))
    forward = make_forward(model, v)
    x, _ = make_batch(real_images, case.batch, v)

    def run():
        out = forward(x)
        v.synchronize()
        return out

    compile_seconds = warm_up(run)
    benchmark.group = f"forward-{case.model}-{v.device}-b{case.batch}"
    describe(benchmark, case, model.flops_per_image() * case.batch, case.batch, suite="forward", dataset="mnist-5k",
             compile_seconds=compile_seconds if v.compile != "off" else None)
    out = benchmark(run)
    rates(benchmark)
    assert out.shape == (case.batch, 10) and torch.isfinite(out.float()).all()
