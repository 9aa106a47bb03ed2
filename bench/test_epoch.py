"""A full epoch of the seed's recipe through each input pipeline, so the report shows what data costs.

Unlike the other suites this one times the loader on purpose. Each round trains a fresh net from
the same seed (built in the untimed setup); afterwards the test set is evaluated outside timing.
"""

import pytest
from grid import epoch_cases

from mnist_models.core.data import make_loader
from mnist_models.core.harness import build
from mnist_models.core.nets import build_model
from mnist_models.core.timing import describe, identity, rates
from mnist_models.runs.train import evaluate, train_epoch


@pytest.mark.parametrize("case", epoch_cases())
def test_epoch(benchmark, case, epoch_dataset, request):
    v = case.variant
    state = {}

    def fresh_run():
        work = build(case.model, v, "train")  # the seed's 777, Adam 1e-3
        state["model"] = work.model
        batches = make_loader(case.loader, epoch_dataset.train, case.batch, v.device)
        return (work.step, batches, v), {}

    steps = len(epoch_dataset.train) // case.batch
    describe(
        benchmark,
        identity(case, "epoch", epoch_dataset.name, len(epoch_dataset.train)),
        build_model(case.model).train_flops_per_image() * steps * case.batch,
        steps * case.batch,
        pinned=bool(case.threads),
        test_images=len(epoch_dataset.test),
    )
    result = benchmark.pedantic(train_epoch, setup=fresh_run, rounds=request.config.getoption("--bench-epoch-rounds"))
    rates(benchmark)
    accuracy = evaluate(state["model"], epoch_dataset.test, v.device)
    benchmark.extra_info.update(mean_loss=result.mean_loss, first_loss=result.first_loss, test_accuracy=accuracy)
    assert result.steps == steps
    assert result.mean_loss < result.first_loss  # the epoch learned
    assert accuracy > 0.2  # chance is 0.1
