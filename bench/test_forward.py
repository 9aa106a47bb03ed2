"""Forward pass (inference) under torch.inference_mode: both nets, batch 1 / 100 / 1000, per variant."""

import pytest
import torch
from grid import forward_cases

from mnist_models.core.harness import build, real_batch
from mnist_models.core.timing import time_call


@pytest.mark.parametrize("case", forward_cases())
def test_forward(benchmark, case, real_images):
    work = build(case.model, case.variant, "forward", seed=0)
    x, y = real_batch(real_images, case.batch, case.variant)
    out = time_call(benchmark, case, work.call_on(x, y), "forward", work.model.flops_per_image() * case.batch)
    assert out.shape == (case.batch, 10) and torch.isfinite(out.float()).all()
