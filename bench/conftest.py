"""Shared set-up of the benchmark suites: options, batches, extra_info, and the report at the end.

Run `pytest bench --benchmark-only` for the full suites (report in reports/), `pytest bench -m quick`
for a small subset, and `pytest bench --benchmark-disable` to run every body once as a smoke test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mnist_models import atomic
from mnist_models.bench_report import write_report
from mnist_models.data import DATASETS, Split, load_dataset
from mnist_models.errors import DataError
from mnist_models.machine import BUSY_CORES, CpuContention, busy_check, busy_warning, machine_info
from mnist_models.variants import Variant, device_name


def pytest_addoption(parser):
    group = parser.getgroup("mnist-bench")
    group.addoption(
        "--bench-dataset",
        default="auto",
        choices=("auto", *DATASETS),
        help="dataset of the epoch suite; auto = mnist when present or downloadable, else mnist-5k",
    )
    group.addoption("--bench-data-root", default="data", help="data root (default: data)")
    group.addoption("--bench-threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    group.addoption("--bench-epoch-rounds", type=int, default=3, help="rounds of each full-epoch benchmark (default: 3)")
    group.addoption(
        "--bench-report",
        default=None,
        help="markdown report path (default: reports/benchmarks-cpu.md, or -cuda.md with a GPU); JSON beside it",
    )


def pytest_configure(config):
    threads = config.getoption("--bench-threads")
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # autotuned in each benchmark's warm-up, outside the timed rounds
    config._mnist_bench = {"busy": busy_check(), "contention": CpuContention(), "started": time.perf_counter()}


def pytest_report_header(config):
    state = config._mnist_bench
    lines = [
        f"mnist-bench: torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name('cpu')}"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    ]
    warning = busy_warning(state["busy"])
    if warning and not config.getoption("benchmark_disable"):  # nothing is timed in a smoke run
        lines.append(warning)
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    from mnist_models.machine import machine_info as ours

    machine_info["mnist_bench"] = ours()


def _report_path(config) -> Path:
    given = config.getoption("--bench-report")
    return Path(given) if given else Path("reports") / f"benchmarks-{'cuda' if torch.cuda.is_available() else 'cpu'}.md"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Write the report (markdown + the JSON it is rendered from) when benchmarks were timed."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    state = config._mnist_bench
    output = config.hook.pytest_benchmark_generate_json(
        config=config,
        benchmarks=bs.benchmarks,
        include_data=False,
        machine_info=bs.get_machine_info(),
        commit_info=config.hook.pytest_benchmark_generate_commit_info(config=config),
    )
    output["mnist_bench"] = {
        "busy": state["busy"],
        "cores_used_by_others_during_run": state["contention"].cores_used_by_others(),
        "wall_seconds": time.perf_counter() - state["started"],
        "machine": machine_info(),
    }
    report = _report_path(config)
    # params hold Case objects; like pytest-benchmark's own JSON, write them as text (their ids).
    atomic.write_text(report.with_suffix(".json"), json.dumps(output, indent=2, default=str) + "\n")
    write_report(output, report)
    config._mnist_bench["report"] = report


def pytest_terminal_summary(terminalreporter, config):
    state = config._mnist_bench
    if "report" in state:
        terminalreporter.write_line(
            f"mnist-bench: report written to {state['report']} (data: {state['report'].with_suffix('.json')})"
        )
    if config.getoption("benchmark_disable"):
        return
    warning = busy_warning(state["busy"])
    others = state["contention"].cores_used_by_others()
    if warning:
        terminalreporter.write_line(warning, yellow=True)
    elif others is not None and others > BUSY_CORES:
        terminalreporter.write_line(
            f"WARNING: other processes used {others} cores during the run; timings are not trustworthy", yellow=True
        )


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def case_threads(request):
    """A case that names its thread count runs with it (fixtures, warm-up and timing), then the
    session's count comes back for the next case."""
    callspec = getattr(request.node, "callspec", None)
    case = callspec.params.get("case") if callspec else None
    wanted = getattr(case, "threads", None)
    if not wanted:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_images() -> Split:
    """Real digits for the forward and train-step batches (mnist-5k ships with the project)."""
    return load_dataset("mnist-5k").train


@pytest.fixture(scope="session")
def epoch_dataset(request):
    """The epoch suite's dataset: --bench-dataset, or mnist when present/downloadable, else mnist-5k."""
    name = request.config.getoption("--bench-dataset")
    root = request.config.getoption("--bench-data-root")
    if name != "auto":
        try:
            return load_dataset(name, root)
        except DataError as exc:
            pytest.exit(f"--bench-dataset {name}: {exc}", returncode=2)
    try:
        return load_dataset("mnist", root)
    except DataError:
        return load_dataset("mnist-5k", root)


def make_batch(images: Split, batch: int, variant: Variant) -> tuple[torch.Tensor, torch.Tensor]:
    """A device-resident batch of real digits in the variant's memory format (built outside timing)."""
    idx = torch.arange(batch) % len(images)
    x = images.images[idx].unsqueeze(1).float().div(255)
    return variant.to_input(x), images.labels[idx].to(variant.device)


def warm_up(fn, calls: int = 3) -> float:
    """Run `fn` until compile, autotuning and first allocations are done; returns the first call's seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(calls - 1):
        fn()
    return first


def describe(benchmark, case, flops_per_call: float, images_per_call: int, **more) -> None:
    """What a reader needs to interpret the number; rates are added by `rates` after timing."""
    v = case.variant
    benchmark.extra_info.update(
        model=case.model,
        device=v.device,
        compile=v.compile,
        precision=v.precision,
        channels_last=v.channels_last,
        batch=case.batch,
        flops_per_call=flops_per_call,
        images_per_call=images_per_call,
        threads=torch.get_num_threads(),
        threads_pinned=bool(getattr(case, "threads", None)),
        device_name=device_name(v.device),
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


def time_call(benchmark, case, fn, suite: str, flops_per_call: float):
    """The forward and train-step protocol: sync inside the timed callable, warm up, describe, time.

    Returns fn's result from the timed run, for the caller to check.
    """
    v = case.variant

    def run():
        out = fn()
        v.synchronize()
        return out

    compile_seconds = warm_up(run)
    benchmark.group = f"{suite}-{case.model}-{v.device}-b{case.batch}"
    describe(
        benchmark,
        case,
        flops_per_call,
        case.batch,
        suite=suite,
        dataset="mnist-5k",
        compile_seconds=compile_seconds if v.compile != "off" else None,
    )
    result = benchmark(run)
    rates(benchmark)
    return result
