"""One training step: forward + loss + backward + Adam step, on a device-resident batch."""

import pytest
import torch

from conftest import describe, make_batch, rates, warm_up
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

    def run():
        loss = step(x, y)
        v.synchronize()
        return loss

    compile_seconds = warm_up(run)
    benchmark.group = f"train-step-{case.model}-{v.device}-b{case.batch}"
    describe(benchmark, case, model.train_flops_per_image() * case.batch, case.batch, suite="train-step", dataset="mnist-5k",
             compile_seconds=compile_seconds if v.compile != "off" else None)
    loss = benchmark(run)
    rates(benchmark)
    assert torch.isfinite(loss)
