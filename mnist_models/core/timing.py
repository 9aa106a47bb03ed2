"""What the benchmark suites do around pytest-benchmark's timer: warm up, describe, time, add rates.

`benchmark` is pytest-benchmark's fixture and `case` a bench grid case (model, variant, batch,
threads); this module needs neither package, only their attributes, so the library stays free of
pytest while every suite times the same way.
"""

from __future__ import annotations

import torch

from .bench_row import BenchIdentity
from .harness import warm_up
from .variants import device_name


def identity(case, suite: str, dataset: str, dataset_size: int | None = None) -> BenchIdentity:
    """The identity of a bench grid case, with the thread count it runs with now (the case's own,
    applied by the suite's fixture, else the session's)."""
    return BenchIdentity(
        suite=suite,
        variant=case.variant,
        model=case.model,
        batch=case.batch,
        threads=torch.get_num_threads(),
        ranks=getattr(case, "ranks", 1),
        loader=getattr(case, "loader", None) or None,
        dataset=dataset,
        dataset_size=dataset_size,
    )


def identify(benchmark, ident: BenchIdentity, **more) -> None:
    """The one way a suite names its benchmark: pytest-benchmark's group and extra_info, both from the
    row's BenchIdentity (core.bench_row reads them back), plus what the suite measured beside it."""
    benchmark.group = ident.group
    benchmark.extra_info.update(**ident.to_info(), **more)


def describe(benchmark, ident: BenchIdentity, flops_per_call: float, images_per_call: int, pinned: bool, **more) -> None:
    """Identify a net's row and add what a reader needs to interpret its time; rates are added by
    `rates` after timing."""
    identify(
        benchmark,
        ident,
        flops_per_call=flops_per_call,
        images_per_call=images_per_call,
        threads_pinned=pinned,
        device_name=device_name(ident.variant.device),
        torch=torch.__version__,
        **more,
    )


def rates(benchmark) -> None:
    """images/s and achieved GFLOP/s from the median (absent when timing is disabled)."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return
    median = stats.stats.median
    info = benchmark.extra_info
    info["images_per_s"] = info["images_per_call"] / median
    info["gflops_per_s"] = info["flops_per_call"] / median / 1e9


def time_call(benchmark, case, call, suite: str, flops_per_call: float):
    """The forward and train-step protocol: warm up the synchronised call, describe it, time it.

    `call` comes from Workload.call_on, so it already ends with the device's synchronize.
    Returns the call's result from the timed run, for the caller to check.
    """
    v = case.variant
    compile_seconds = warm_up(call)
    describe(
        benchmark,
        identity(case, suite, "mnist-5k"),
        flops_per_call,
        case.batch,
        pinned=bool(case.threads),
        compile_seconds=compile_seconds if v.compile != "off" else None,
    )
    result = benchmark(call)
    rates(benchmark)
    return result
