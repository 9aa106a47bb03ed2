"""One training step: forward + loss + backward + Adam step, on a device-resident batch."""

import pytest
import torch
from conftest import make_batch, time_call
from grid import train_step_cases

from mnist_models.nets import build_model
from mnist_models.variants import make_train_step


@pytest.mark.parametrize("case", train_step_cases())
def test_train_step(benchmark, case, real_images):
    v = case.variant
    torch.manual_seed(777)
    model = v.place(build_model(case.model)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_train_step(model, optimizer, v)
    x, y = make_batch(real_images, case.batch, v)
    loss = time_call(benchmark, case, lambda: step(x, y), "train-step", model.train_flops_per_image() * case.batch)
    assert torch.isfinite(loss)
