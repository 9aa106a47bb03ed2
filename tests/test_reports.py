"""Report rendering: accuracy-vs-cost from run records, benchmarks from pytest-benchmark JSON."""

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from mnist_models import cli
from mnist_models.core.bench_row import BenchRow
from mnist_models.core.variants import Variant
from mnist_models.reporting.accuracy import pareto, render
from mnist_models.reporting.benchmarks import render as render_bench
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunStore
from mnist_models.runs.sweep import run_sweep, sweep_configs


def load_runs(folder):
    return RunStore(folder).load_all()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Real runs: both nets, the seed recipe, two seeds, one epoch on mnist-5k."""
    folder = tmp_path_factory.mktemp("runs")
    base = TrainConfig(
        dataset="mnist-5k", epochs=1, measure_latency=False, variant=Variant("cpu")
    )  # -cpu- names on a GPU box too
    run_sweep(sweep_configs(base, ["simple", "deep"], ["seed-eager-fp32"], [1, 2]), folder, progress=False, log=lambda s: None)
    return folder


def test_pareto_front():
    # (cost, accuracy): the second point is cheaper and better than the first; the third is more accurate.
    assert pareto([(10, 0.90), (5, 0.92), (20, 0.95)]) == [False, True, True]


def test_accuracy_report_from_real_runs(runs_dir, tmp_path):
    runs, problems = load_runs(runs_dir)
    text = render(runs, problems, None, tmp_path, "test")
    assert "## mnist-5k (4,000 train / 1,000 test images)" in text
    assert "simple seed-loader cpu-eager-fp32" in text and "deep seed-loader cpu-eager-fp32" in text
    assert "2 (1, 2)" in text  # two seeds per group
    assert "### Reading" in text and "seed-to-seed spread" in text
    [png] = tmp_path.glob("accuracy-vs-cost-mnist-5k-*.png")  # one machine: one plot, named by its key
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_corrupt_record_is_skipped_and_named(runs_dir, tmp_path, capsys):
    mixed = tmp_path / "runs"
    subprocess.run(["cp", "-r", str(runs_dir), str(mixed)], check=True)
    (mixed / "mnist-5k" / "zz-broken.json").write_text("{")
    assert cli.main(["report", "--runs-dir", str(mixed), "--out", str(tmp_path / "r.md")]) == 0
    assert "skipped run record" in capsys.readouterr().err
    text = (tmp_path / "r.md").read_text()
    assert "WARNING: skipped run record" in text and "deep seed-loader" in text


def test_datasets_are_never_averaged_together(runs_dir, tmp_path):
    runs, _ = load_runs(runs_dir)
    other = replace(
        runs[0],
        config=replace(runs[0].config, dataset="fashion-mnist"),
        dataset=replace(runs[0].dataset, name="fashion-mnist", train=60000, test=10000),
        test_accuracy=0.5,
    )
    text = render(runs + [other], [], None, tmp_path, "test")
    assert "## fashion-mnist (60,000 train / 10,000 test images)" in text
    assert "(mixed: compare within a dataset only)" in text
    mnist5k_section = text.split("## mnist-5k")[1]
    assert "0.5000" not in mnist5k_section.split("## ")[0]


def test_report_without_runs_is_one_line_error(tmp_path, capsys):
    assert cli.main(["report", "--runs-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r.md")]) == 2
    assert "no runs directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", "--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")]) == 2
    assert "no valid run records" in capsys.readouterr().err


def _bench(name, group, median, **info):
    return {
        "name": f"test_x[{name}]",
        "group": group,
        "stats": {"median": median, "iqr": median / 10, "rounds": 5},
        "extra_info": info,
    }


def test_bench_report_speedups_and_ceiling_share():
    common = dict(suite="train-step", model="simple", device="cpu", batch=100, flops_per_call=2e9, images_per_call=100)
    data = {
        "datetime": "2026-11-28T10:00:00",
        "benchmarks": [
            _bench("cpu-fp32-n512", "ceiling", 0.1, suite="ceiling", device="cpu", precision="fp32", gflops_per_s=100.0),
            _bench(
                "cpu-fp32-n2048", "ceiling", 0.1, suite="ceiling", device="cpu", precision="fp32", gflops_per_s=60.0
            ),  # memory-bound
            _bench("simple-cpu-eager-fp32-b100", "g", 0.040, compile="off", precision="fp32", channels_last=False, **common),
            _bench("simple-cpu-eager-fp32-cl-b100", "g", 0.020, compile="off", precision="fp32", channels_last=True, **common),
        ],
        "mnist_bench": {"machine": {"cpu": "test cpu", "torch": "x"}, "busy": {"busy": True, "reason": "a neighbour"}},
    }
    text = render_bench(data)
    row = next(line for line in text.splitlines() if line.startswith("| `") and "eager-fp32-cl-b100" in line)
    assert "2.00x" in row  # 40 ms baseline / 20 ms
    assert "5,000" in row  # images/s
    assert "100.0" in row and "100.0% of fp32 matmul" in row  # 2 GFLOP / 20 ms = 100 GFLOP/s = the best ceiling size
    assert "WARNING: the machine was busy" in text
    assert "exceed 100% of the ceiling" not in text  # the fastest row is exactly at the ceiling
    data["benchmarks"][2]["stats"]["median"] = 0.010
    assert "exceed 100% of the ceiling" in render_bench(data)


def test_the_ceiling_is_the_best_of_the_matmuls_and_the_convolution():
    common = dict(
        suite="train-step", model="simple", device="cpu", batch=100, flops_per_call=2e9, images_per_call=100, compile="off"
    )
    data = {
        "benchmarks": [
            _bench(
                "cpu-fp32-n512", "ceiling", 0.1, suite="ceiling", op="matmul", device="cpu", precision="fp32", gflops_per_s=100.0
            ),
            _bench(
                "cpu-fp32-conv", "ceiling", 0.1, suite="ceiling", op="conv", device="cpu", precision="fp32", gflops_per_s=160.0
            ),
            _bench("simple-cpu-eager-fp32-b100", "g", 0.016, precision="fp32", channels_last=False, **common),  # 125 GFLOP/s
        ],
        "mnist_bench": {"machine": {"cpu": "c", "cpu_isa": ["avx2"]}},
    }
    text = render_bench(data)
    row = next(line for line in text.splitlines() if "eager-fp32-b100" in line and line.startswith("| `"))
    assert "78.1% of fp32 conv" in row  # above the matmul's 100 GFLOP/s, below the convolution's 160
    assert "exceed 100% of the ceiling" not in text
    assert "| `cpu-fp32-conv` | conv |" in text  # a file from before the identity: the op without its size


def test_half_precision_rows_on_a_cpu_without_native_bf16_are_labelled_emulated():
    common = dict(
        suite="train-step", model="simple", device="cpu", batch=100, flops_per_call=2e9, images_per_call=100, compile="off"
    )
    data = {
        "benchmarks": [
            _bench("cpu-fp32-n512", "ceiling", 0.1, suite="ceiling", device="cpu", precision="fp32", gflops_per_s=100.0),
            _bench("cpu-bf16-n512", "ceiling", 0.1, suite="ceiling", device="cpu", precision="bf16", gflops_per_s=1.2),
            _bench("simple-cpu-eager-fp32-b100", "g", 0.040, precision="fp32", channels_last=False, **common),
            _bench("simple-cpu-eager-bf16-b100", "g", 0.400, precision="bf16", channels_last=False, **common),
        ],
        "mnist_bench": {"machine": {"cpu": "Zen 3", "cpu_isa": ["avx2", "fma"], "cpu_capability": "AVX2", "native_bf16": False}},
    }
    text = render_bench(data)
    bf16 = next(line for line in text.splitlines() if "eager-bf16-b100" in line)
    fp32 = next(line for line in text.splitlines() if "eager-fp32-b100" in line and line.startswith("| `"))
    assert "**emulated**" in bf16 and "emulated" not in fp32
    assert "of fp32 matmul" in bf16  # its own 1.2 GFLOP/s matmul is no ceiling
    assert "bf16 emulated (no AVX-512 BF16 or AMX)" in text and "torch capability AVX2" in text
    data["mnist_bench"]["machine"]["cpu_isa"] = ["avx2", "avx512f", "avx512_bf16"]
    assert "**emulated**" not in render_bench(data)


@pytest.mark.slow
def test_bench_session_writes_report(tmp_path):
    report = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "-q",
            "--benchmark-only",
            "-k",
            "ceiling and cpu-fp32-n512",
            "--bench-report",
            str(report),
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["benchmarks"][0]["extra_info"]["gflops_per_s"] > 0
    assert "## Machine ceiling" in report.read_text()
    [kept] = (tmp_path / "history").glob("*-subset.json")  # the session's copy, beside its report
    assert json.loads(kept.read_text())["benchmarks"] == data["benchmarks"]


def test_half_precision_ceiling_is_never_below_fp32():
    from mnist_models.reporting.benchmarks import ceiling_for

    def row(device, precision):
        return BenchRow.from_json(_bench("x", "g", 0.01, suite="train-step", device=device, precision=precision))

    cpu_without_bf16 = {("cpu", "fp32"): 100.0, ("cpu", "bf16"): 1.0}
    gpu = {("cuda", "fp32"): 50.0, ("cuda", "bf16"): 500.0}
    assert ceiling_for(row("cpu", "bf16"), cpu_without_bf16) == 100.0
    assert ceiling_for(row("cuda", "bf16"), gpu) == 500.0
    assert ceiling_for(row("cuda", "fp32"), gpu) == 50.0


def test_seed_conclusion_verdict_separates_reproduced_from_not_reproduced():
    from mnist_models.reporting.accuracy import _conclusion_verdict

    # arguments: seed-style gap (deep - simple), its noise (one standard error), real gap, its noise
    # seed-style says deep worse beyond its spread, correct eval says deep better by far more than the spread
    assert "reproduces its observation here, beyond" in _conclusion_verdict(-0.03, 0.005, 0.01, 0.002)
    assert "does not survive" in _conclusion_verdict(-0.03, 0.005, 0.01, 0.002)
    # a seed-style gap inside its spread reproduces nothing (fashion-mnist's 0.8086 vs 0.8102 once read as a reproduction)
    assert "reproduces nothing" in _conclusion_verdict(-0.0016, 0.005, 0.01, 0.002)
    # seed-style already says deep better: the observation is not reproduced at all
    assert "does not reproduce" in _conclusion_verdict(0.01, 0.005, 0.01, 0.002)
    # a real gap inside the spread is not called a reversal
    assert "not beyond the seed-to-seed spread" in _conclusion_verdict(-0.03, 0.005, 0.001, 0.002)
    assert "does not favour deep" in _conclusion_verdict(-0.03, 0.005, -0.01, 0.002)


def test_single_thread_case_is_compared_with_the_baseline_not_used_as_it():
    common = dict(
        suite="train-step",
        model="deep",
        device="cpu",
        batch=100,
        flops_per_call=2e9,
        images_per_call=100,
        compile="off",
        precision="fp32",
        channels_last=False,
    )
    data = {
        "datetime": "2026-11-29T10:00:00",
        "benchmarks": [
            _bench("deep-cpu-eager-fp32-t1-b100", "g", 0.030, threads=1, threads_pinned=True, **common),
            _bench("deep-cpu-eager-fp32-b100", "g", 0.060, threads=2, threads_pinned=False, **common),
        ],
        "mnist_bench": {"machine": {"cpu": "test cpu", "torch": "x"}},
    }
    text = render_bench(data)
    row = next(line for line in text.splitlines() if "eager-fp32-t1-b100" in line and line.startswith("| `"))
    assert "2.00x" in row  # one thread twice as fast as the two-thread baseline
    assert "baseline `deep-cpu-eager-fp32-b100`" in text


def test_accuracy_pools_over_machines_and_every_cost_sits_under_its_machine(runs_dir, tmp_path):
    from mnist_models.system.machine import machine_key

    runs, _ = load_runs(runs_dir)
    other = replace(runs[0], machine={**runs[0].machine, "cpu": "Other CPU (family 25, model 1)", "cpu_isa": ["avx2", "fma"]})
    here, there = runs[0].machine_key, machine_key(other.machine)
    forward = _bench("f", "forward", 0.002, suite="forward", model=runs[0].config.model, device="cpu", batch=1)
    bench = {"benchmarks": [forward], "machine_info": {"mnist_bench": runs[0].machine}}
    text = render(runs + [other], [], {here: bench}, tmp_path, "test")
    assert "- **Machines** (2;" in text and f"`{there}` = Other CPU (family 25, model 1) \\[avx2, fma\\]" in text
    # Accuracy pools across machines (one row per recipe, n per machine); each cost has its machine's heading.
    accuracy = text.split("### Accuracy")[1].split("### Cost on")[0]
    [first_accuracy] = [line for line in accuracy.splitlines() if line.startswith(f"| {runs[0].config.model}")]
    assert "| 3 (1, 1, 2) |" in first_accuracy and f"{here}: 2; {there}: 1" in first_accuracy
    sections = dict(part.split("\n", 1) for part in text.split("### Cost on ")[1:])
    assert set(sections) == {here, there}
    assert (tmp_path / f"accuracy-vs-cost-mnist-5k-{here}.png").exists()
    assert (tmp_path / f"accuracy-vs-cost-mnist-5k-{there}.png").exists()
    mine = [line for line in sections[there].split("####")[0].splitlines() if line.startswith("| ")][1:]
    assert len(mine) == 1 and "| 1 |" in mine[0]  # only the other machine's run, and no benchmark latency
    assert "2.00 / -" in sections[here] and "2.00 / -" not in sections[there]  # latency from its own machine's JSON only


def test_retrained_runs_give_the_noise_floor(runs_dir, tmp_path):
    runs, _ = load_runs(runs_dir)
    runs = [replace(r) for r in runs]
    runs[0].replaces = {"test_accuracy": runs[0].test_accuracy - 0.01, "machine": {"cpu": "Elsewhere", "cpu_isa": []}}
    runs[1].replaces = {"test_accuracy": runs[1].test_accuracy, "machine": runs[1].machine}
    text = render(runs, [], None, tmp_path, "test")
    line = next(line for line in text.splitlines() if "Same seed, run again" in line)
    assert "2 runs were retrained" in line and "1 of them first ran on another machine" in line
    assert "moved by 0.0050 on average (max 0.0100; 1 identical)" in line
    assert "Same seed, run again" not in render(runs[2:], [], None, tmp_path, "test")


def test_scaling_efficiencies_compare_with_one_rank_of_the_same_threads():
    """On an 8-core box '2 ranks x 4 threads' once read against 1 rank x 1 thread: a few hundred percent."""
    from mnist_models.reporting.benchmarks import scaling_rows

    def case(kind, ranks, threads, per_rank, median, **split):
        return _bench(
            f"simple-t{threads}-r{ranks}-b{per_rank * ranks}",
            "scaling-simple-cpu",
            median,
            suite="scaling",
            scaling=kind,
            ranks=ranks,
            threads=threads,
            per_rank_batch=per_rank,
            batch=per_rank * ranks,
            **split,
        )

    benches = [
        case("baseline", 1, 4, 100, 0.020),
        case("baseline", 1, 1, 100, 0.080),
        case("plain", 1, 8, 100, 0.012),
        case("strong", 2, 4, 50, 0.0125, compute_s=0.010, wait_s=0.0005, comm_s=0.002),
        case("weak", 2, 4, 100, 0.025, compute_s=0.020, wait_s=0.004, comm_s=0.001, straggler=1, straggler_ratio=1.2),
    ]
    rows, verdict = scaling_rows([BenchRow.from_json(b) for b in benches])
    by_kind = {row[1]: row for row in rows if row[1] in ("strong", "weak")}
    assert by_kind["strong"][9] == "80% (strong)"  # 1 x 4 threads: 20 ms / (2 x 12.5 ms); against 1 x 1 it read 320%
    assert by_kind["weak"][9] == "80% (weak)"  # 20 ms / 25 ms
    assert by_kind["strong"][10] == "80% / 4% / 16%" and by_kind["strong"][11] == "-"
    assert by_kind["weak"][11] == "rank 1 (1.20x)"
    assert verdict == "2 ranks x 4 threads (strong) do not beat 1 rank x 8 threads on the same cores: 0.96x its throughput"


def test_the_scaling_cases_hold_on_any_core_count():
    from mnist_models.scale.scaling import scaling_cases

    two = scaling_cases(2)
    assert two == [(1, 1, 100, "baseline"), (1, 2, 100, "plain"), (2, 1, 50, "strong"), (2, 1, 100, "weak")]
    eight = scaling_cases(8)
    assert {(n, t) for n, t, _, kind in eight if kind == "baseline"} == {(1, 4), (1, 2), (1, 1)}  # one per t the ranks use
    assert (8, 1, 12, "strong") not in eight and (8, 1, 100, "weak") in eight  # 8 does not divide 100: no strong case
    assert (4, 2, 25, "strong") in eight and (2, 4, 50, "strong") in eight
    assert scaling_cases(1) == [(1, 1, 100, "baseline")]


def test_a_step_splits_into_compute_wait_and_communication_and_names_a_straggler():
    from mnist_models.scale.scaling import breakdown

    steps = [0.030 + 0.0001 * (i % 5) for i in range(30)]
    even = breakdown(steps, [[0.020 + 0.0001 * (i % 5) for i in range(30)], [0.0201 + 0.0001 * (i % 5) for i in range(30)]])
    assert even["straggler"] is None and even["comm_s"] == pytest.approx(
        0.0302 - 0.0203, abs=1e-6
    )  # medians: step less the slowest rank
    slow = breakdown(steps, [[0.020 + 0.0001 * (i % 5) for i in range(30)], [0.026 + 0.0001 * (i % 5) for i in range(30)]])
    assert slow["straggler"] == 1 and slow["straggler_ratio"] == pytest.approx(0.0262 / 0.0202)  # against the others
    assert slow["wait_s"] == pytest.approx(0.003)  # rank 0 waits 6 ms, rank 1 none: 3 ms on average


def test_the_benchmark_report_draws_speedups_and_images_per_batch(tmp_path):
    from mnist_models.reporting.benchmarks import write_report

    def forward(variant, batch, median, **info):
        return _bench(
            f"simple-cpu-{variant}-b{batch}",
            f"forward-simple-cpu-b{batch}",
            median,
            suite="forward",
            model="simple",
            device="cpu",
            batch=batch,
            images_per_call=batch,
            **info,
        )

    eager = dict(compile="off", precision="fp32", channels_last=False)
    cl = dict(eager, channels_last=True)
    data = {
        "datetime": "2026-11-29T10:00:00",
        "benchmarks": [forward("eager-fp32", b, b * 1e-4, **eager) for b in (1, 100, 1000)]
        + [forward("eager-fp32-cl", b, b * 5e-5, **cl) for b in (1, 100, 1000)],
        "mnist_bench": {},
    }
    report = write_report(data, tmp_path / "bench.md")
    text = report.read_text()
    assert "![bench-speedups](bench-speedups.png)" in text and "![bench-batch](bench-batch.png)" in text
    for name in ("bench-speedups.png", "bench-batch.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_child_process_is_not_counted_as_contention():
    """The scaling suite's torchrun jobs are the bench session's own work, not a neighbour's."""
    from mnist_models.system.machine import CpuContention

    probe = CpuContention()
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass"], check=True
    )
    assert probe.own_seconds() >= 1.4
    assert probe.cores_used_by_others() < 0.5  # it burned a whole core, but it was ours


def test_a_runs_set_up_is_its_busy_sample_with_its_own_work_taken_out():
    """train() reads the busy check over its own set-up instead of waiting idle first: burning a core itself
    is not somebody else's load, a stranger spinning beside it is."""
    from mnist_models.system.machine import CpuContention, busy_check

    def spin(seconds: float) -> None:
        t = time.process_time()
        while time.process_time() - t < seconds:
            pass

    started = time.perf_counter()
    mine = CpuContention()
    spin(0.6)
    assert busy_check(since=mine)["cores_used_by_others"] < 0.5  # a whole core busy, but ours
    assert time.perf_counter() - started < 1.0  # no extra wait: the set-up was the sample
    stranger = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        theirs = CpuContention()
        spin(0.6)
        assert busy_check(since=theirs)["cores_used_by_others"] > 0.5
    finally:
        stranger.kill()
        stranger.wait(timeout=10)
