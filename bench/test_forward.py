"""Forward pass (inference) under torch.inference_mode: both nets, batch 1 / 100 / 1000, per variant."""

import pytest
import torch
from conftest import make_batch, time_call
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
    out = time_call(benchmark, case, lambda: forward(x), "forward", model.flops_per_image() * case.batch)
    assert out.shape == (case.batch, 10) and torch.isfinite(out.float()).all()
