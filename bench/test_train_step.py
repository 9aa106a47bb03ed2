"""One training step: forward + loss + backward + Adam step, on a device-resident batch."""

import pytest
import torch
from grid import train_step_cases

from mnist_models.core.harness import build, real_batch
from mnist_models.core.timing import time_call


@pytest.mark.parametrize("case", train_step_cases())
def test_train_step(benchmark, case, real_images):
    work = build(case.model, case.variant, "train")
    x, y = real_batch(real_images, case.batch, case.variant)
    loss = time_call(benchmark, case, work.call_on(x, y), "train-step", work.model.train_flops_per_image() * case.batch)
    assert torch.isfinite(loss)
