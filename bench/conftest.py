"""Shared set-up of the benchmark suites: options, fixtures, extra_info, and the report at the end.

Run `pytest bench --benchmark-only` for the full suites (report in reports/machines/<this machine>/), `pytest bench -m quick`
for a small subset, and `pytest bench --benchmark-disable` to run every body once as a smoke test.
Model, optimizer, step and batch come from the library's harness (mnist_models.core.harness), the same
code that training and profiling run. Session state lives in `config.stash`.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from mnist_models.core.data import DATASETS, DEFAULT_ROOT, Split, load_dataset
from mnist_models.core.variants import device_name
from mnist_models.reporting.benchmarks import write_report
from mnist_models.system import atomic
from mnist_models.system.allocator import keep_freed_memory
from mnist_models.system.errors import DataError, UsageError
from mnist_models.system.machine import (
    BUSY_CORES,
    CpuContention,
    busy_check,
    busy_warning,
    evidence_dir,
    git_commit,
    machine_key,
    set_threads,
    this_machine,
)
from mnist_models.system.paths import home


@dataclass
class BenchState:
    busy: dict
    contention: CpuContention
    started: float
    timed: list = field(default_factory=list)  # the stats (pytest-benchmark's Metadata) of every timed benchmark
    report: Path | None = None
    partial: bool = False
    subset: bool = False  # -k / -m or named files left benchmarks out: never written over the full report
    history: Path | None = None  # this session's copy in the machine's history folder


STATE = pytest.StashKey[BenchState]()


def pytest_addoption(parser):
    group = parser.getgroup("mnist-bench")
    group.addoption(
        "--bench-dataset",
        default="auto",
        choices=("auto", *DATASETS),
        help="dataset of the epoch suite; auto = mnist when present or downloadable, else mnist-5k",
    )
    group.addoption("--bench-data-root", default=str(DEFAULT_ROOT), help=f"data root (default: {DEFAULT_ROOT})")
    group.addoption("--bench-threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    group.addoption(
        "--bench-epoch-rounds",
        type=int,
        default=5,
        help="rounds of each full-epoch and process benchmark (default: 5; an interval over 5 alternated pairs is their range, 93.8%%)",
    )
    group.addoption(
        "--bench-report",
        default=None,
        help=f"markdown report path (default: {evidence_dir()}/benchmarks-cpu.md, or -cuda.md with a GPU; "
        "this machine's folder); JSON beside it",
    )


DEFAULT_STORAGE = f"file://{home() / '.benchmarks'}"  # autosaves beside the reports, wherever pytest runs


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options (its own hook is trylast)
def pytest_configure(config):
    if config.getoption("benchmark_storage") == DEFAULT_STORAGE:
        # Autosaved runs land per machine: two CPUs of "the same kind" differ by 4x, their runs must not mix.
        config.option.benchmark_storage = f"{DEFAULT_STORAGE}/{machine_key(this_machine())}"
    threads = config.getoption("--bench-threads")
    if threads:
        set_threads(threads)
    try:
        keep_freed_memory()  # every row alike: the same allocator as `mnist-bench train` (system/allocator.py)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    # cuDNN autotuning is set where every mode builds its net (core.harness.configure_backends): it runs in
    # each benchmark's warm-up, outside the timed rounds, and training and profiling use the same kernels.
    config.stash[STATE] = BenchState(busy_check(), CpuContention(), time.perf_counter())


def pytest_report_header(config):
    state = config.stash[STATE]
    lines = [
        f"mnist-bench: torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name('cpu')}"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    ]
    warning = busy_warning(state.busy)
    if warning and not config.getoption("benchmark_disable"):  # nothing is timed in a smoke run
        lines.append(warning)
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    """The one copy of the project's machine info (CPU family, ISA, versions, code) in every JSON."""
    from mnist_models.system.machine import machine_info as ours

    machine_info["mnist_bench"] = ours()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Every JSON pytest-benchmark writes (--benchmark-json, autosave) and the report's own carry
    whether the machine was busy before and during the run."""
    state = config.stash[STATE]
    output_json["mnist_bench"] = {
        "busy": state.busy,
        "cores_used_by_others_during_run": state.contention.cores_used_by_others(),
        "wall_seconds": time.perf_counter() - state.started,
    }


@pytest.fixture
def benchmark(benchmark, request):
    """pytest-benchmark's fixture, remembered in the session's stash once it has timed something."""
    yield benchmark
    if getattr(benchmark, "stats", None) and not benchmark.has_error:
        request.config.stash[STATE].timed.append(benchmark.stats)


def pytest_deselected(items):
    if items:
        items[0].config.stash[STATE].subset = True


def pytest_collection_finish(session):
    """A session that collected only some of the suites (`pytest bench/test_process.py`) is a subset too."""
    suites = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    collected = {Path(str(item.fspath)).name for item in session.items}
    if collected and collected != suites:
        session.config.stash[STATE].subset = True


def _report_path(config) -> Path:
    """--bench-report, else benchmarks-<device>.md in this machine's evidence folder (reports/machines/<machine>/),
    never another machine's; a subset (-k, -m) goes to its own .subset.md."""
    given = config.getoption("--bench-report")
    if given:
        return Path(given)
    name = f"benchmarks-{'cuda' if torch.cuda.is_available() else 'cpu'}"
    return evidence_dir() / (f"{name}.subset.md" if config.stash[STATE].subset else f"{name}.md")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Write the report (markdown + the JSON it is rendered from) when benchmarks were timed.

    A session that failed or was interrupted never writes over a complete report: what it timed
    goes to `<report>.partial.md` (+ .json), which says so on its first line.
    """
    config = session.config
    state = config.stash[STATE]
    if not state.timed:
        return
    machine = config.hook.pytest_benchmark_generate_machine_info(config=config)
    config.hook.pytest_benchmark_update_machine_info(config=config, machine_info=machine)
    output = config.hook.pytest_benchmark_generate_json(
        config=config,
        benchmarks=state.timed,
        include_data=False,
        machine_info=machine,
        commit_info=config.hook.pytest_benchmark_generate_commit_info(config=config),
    )
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=state.timed, output_json=output)
    report = _report_path(config)
    state.partial = exitstatus != 0
    if state.partial:
        report = report.with_suffix(".partial.md")
        output["mnist_bench"]["partial"] = f"pytest exit status {int(exitstatus)}: the session failed or was interrupted"
    # The command as it was typed (a subset's -m/-k included): the report names what it ran.
    output["mnist_bench"]["command"] = "pytest " + shlex.join(config.invocation_params.args)
    # params hold Case objects; like pytest-benchmark's own JSON, write them as text (their ids).
    text = json.dumps(output, indent=2, default=str) + "\n"
    atomic.write_text(report.with_suffix(".json"), text)
    write_report(output, report, command=output["mnist_bench"]["command"])
    state.report = report
    if not state.partial:
        state.history = append_history(report.parent / "history", text, "subset" if state.subset else "full")


def append_history(folder: Path, text: str, kind: str) -> Path:
    """Every timed session, full or subset, kept in the history folder beside its report (by default
    this machine's evidence folder) under its date and commit (asv-like): appended, never rewritten.
    `mnist-bench compare <that folder>` draws the trend."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    commit = (git_commit() or "unknown").replace("+", "-")
    for n in range(100):
        path = folder / f"{stamp}-{commit}-{kind}{f'-{n}' if n else ''}.json"
        if not path.exists():
            return atomic.write_text(path, text)
    raise DataError(f"too many history files named {stamp}-{commit}-{kind} in {folder}")


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash[STATE]
    if state.report is not None:
        what = "PARTIAL report (the session failed or was interrupted)" if state.partial else "report"
        terminalreporter.write_line(f"mnist-bench: {what} written to {state.report} (data: {state.report.with_suffix('.json')})")
        if state.history is not None:
            terminalreporter.write_line(f"mnist-bench: kept in this machine's history as {state.history}")
    if config.getoption("benchmark_disable"):
        return
    warning = busy_warning(state.busy)
    others = state.contention.cores_used_by_others()
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
    before = set_threads(wanted)
    try:
        yield
    finally:
        set_threads(before)


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
