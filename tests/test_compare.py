"""mnist-bench compare: ratios with their noise, the regression gate and its skips, trends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_models import cli
from mnist_models.core.bench_row import BenchRow
from mnist_models.reporting.compare import beyond_noise
from mnist_models.system.machine import machine_key, this_machine

ROOT = Path(__file__).resolve().parent.parent
MACHINE = {"cpu": "Test CPU (family 1, model 2)", "cpu_isa": ["avx2", "fma"], "cores": 2, "torch_threads": 2, "torch": "x"}
OTHER = {**MACHINE, "cpu": "Other CPU (family 9, model 9)", "cpu_isa": ["avx2", "avx512f", "avx512_bf16"]}


def bench(name, median, spread, **info):
    info = {
        "suite": "train-step",
        "model": "simple",
        "device": "cpu",
        "batch": 100,
        "compile": "off",
        "precision": "fp32",
        "channels_last": False,
        "flops_per_call": 2e9,
        "images_per_call": 100,
        **info,
    }
    stats = {"median": median, "q1": median - spread, "q3": median + spread, "iqr": 2 * spread, "rounds": 9}
    return {"name": f"test_train_step[{name}]", "group": "train-step-simple-cpu-b100", "stats": stats, "extra_info": info}


def run_json(path: Path, medians: dict, machine=MACHINE, busy=False) -> Path:
    rows = [
        bench("simple-cpu-eager-fp32-b100", medians["eager"], 0.001),
        bench("simple-cpu-eager-fp32-cl-b100", medians["cl"], 0.001, channels_last=True),
    ]
    data = {
        "datetime": "2026-11-29T12:00:00",
        "benchmarks": rows,
        "machine_info": {"mnist_bench": machine},
        "mnist_bench": {"busy": {"busy": busy, "reason": "a neighbour" if busy else ""}},
    }
    path.write_text(json.dumps(data))
    return path


def test_noise_is_the_overlap_of_interquartile_ranges():
    def row(median, spread):
        return BenchRow.from_json(bench("simple-cpu-eager-fp32-b100", median, spread))

    a = row(0.020, 0.001)
    assert not beyond_noise(a, row(0.0205, 0.00075))  # overlapping
    assert beyond_noise(a, row(0.025, 0.001))  # apart
    assert not beyond_noise(a, row(0.025, 0.01))  # a wide run swallows it


def test_a_change_inside_the_noise_is_not_flagged_one_beyond_it_is(tmp_path, capsys):
    base = run_json(tmp_path / "base.json", {"eager": 0.020, "cl": 0.016})
    new = run_json(tmp_path / "new.json", {"eager": 0.0205, "cl": 0.024})  # eager +2.5% (inside), cl +50% (beyond)
    out = tmp_path / "c.md"
    assert cli.main(["compare", str(base), str(new), "--out", str(out)]) == 0
    text = out.read_text()
    eager = next(line for line in text.splitlines() if "`simple-cpu-eager-fp32-b100`" in line)
    cl = next(line for line in text.splitlines() if "`simple-cpu-eager-fp32-cl-b100`" in line)
    assert "1.02" in eager and "within noise" in eager
    assert "1.50" in cl and "**slower**" in cl
    assert "Different machines" not in text and (tmp_path / "c-1.png").read_bytes()[:4] == b"\x89PNG"


def test_the_gate_fails_only_beyond_noise_and_threshold(tmp_path, capsys):
    base = run_json(tmp_path / "base.json", {"eager": 0.020, "cl": 0.016})
    small = run_json(tmp_path / "small.json", {"eager": 0.020, "cl": 0.0176})  # cl +10%, beyond noise, under 25%
    big = run_json(tmp_path / "big.json", {"eager": 0.020, "cl": 0.024})  # cl +50%
    assert cli.main(["compare", str(base), str(small), "--fail-above", "25%", "--out", str(tmp_path / "a.md"), "--no-plot"]) == 0
    assert cli.main(["compare", str(base), str(big), "--fail-above", "25%", "--out", str(tmp_path / "b.md"), "--no-plot"]) == 1
    assert "regression: 1 benchmark(s) slower beyond noise by more than 25%" in capsys.readouterr().err
    assert "FAIL" in (tmp_path / "b.md").read_text()


def test_the_gate_shows_but_never_fails_a_slower_ceiling(tmp_path, capsys):
    base = run_json(tmp_path / "base.json", {"eager": 0.020, "cl": 0.016})
    new = run_json(tmp_path / "new.json", {"eager": 0.020, "cl": 0.016})
    for path, median in ((base, 0.011), (new, 0.025)):  # torch's own fp32 matmul, 2.3x slower: the host, not this code
        data = json.loads(path.read_text())
        data["benchmarks"].append(
            {
                **bench("cpu-fp32-n1024", median, 0.0005, suite="ceiling", model=None, n=1024),
                "name": "test_matmul_ceiling[cpu-fp32-n1024]",
            }
        )
        path.write_text(json.dumps(data))
    out = tmp_path / "g.md"
    assert cli.main(["compare", str(base), str(new), "--fail-above", "100%", "--out", str(out), "--no-plot"]) == 0
    row = next(line for line in out.read_text().splitlines() if "`cpu-fp32-matmul-n1024`" in line)
    assert "slower (host; not gated)" in row and "FAIL" not in row


def test_different_machines_compare_what_transfers(tmp_path):
    base = run_json(tmp_path / "base.json", {"eager": 0.020, "cl": 0.016})
    new = run_json(tmp_path / "new.json", {"eager": 0.010, "cl": 0.005}, machine=OTHER)
    out = tmp_path / "c.md"
    assert cli.main(["compare", str(base), str(new), "--out", str(out), "--no-plot"]) == 0
    text = out.read_text()
    assert "**Different machines**" in text
    cl = next(line for line in text.splitlines() if "`simple-cpu-eager-fp32-cl-b100`" in line)
    assert "1.25x → 2.00x" in cl  # speedup over each run's own eager fp32 baseline


def test_the_gate_skips_a_busy_machine_and_a_machine_without_baseline(tmp_path, capsys):
    baselines = tmp_path / "machines"
    (baselines / machine_key(MACHINE)).mkdir(parents=True)
    run_json(baselines / machine_key(MACHINE) / "baseline.json", {"eager": 0.020, "cl": 0.016})
    slow = run_json(tmp_path / "slow.json", {"eager": 0.040, "cl": 0.032})
    gate = ["compare", "--baselines", str(baselines), "--fail-above", "25%", "--no-plot", "--out", str(tmp_path / "g.md")]
    assert cli.main([*gate, str(slow)]) == 1  # the matching baseline is found and the 2x regression fails
    assert cli.main([*gate, str(run_json(tmp_path / "busy.json", {"eager": 0.04, "cl": 0.032}, busy=True))]) == 0
    assert "gate skipped: the machine was busy (a neighbour)" in capsys.readouterr().out
    assert cli.main([*gate, str(run_json(tmp_path / "elsewhere.json", {"eager": 0.04, "cl": 0.032}, machine=OTHER))]) == 0
    assert "gate skipped: no baseline for this machine (Other-family-9-model-9-avx512bf16)" in capsys.readouterr().out


def test_rows_that_measured_different_work_are_never_ratioed(tmp_path, capsys):
    """Same benchmark name, other dataset or thread count: listed as not comparable, naming the field."""
    base = run_json(tmp_path / "base.json", {"eager": 0.020, "cl": 0.016})
    new = run_json(tmp_path / "new.json", {"eager": 0.200, "cl": 0.160})  # 10x "slower": different work
    for path, dataset, size, threads in ((base, "mnist-5k", 4000, 2), (new, "fashion-mnist", 60000, 1)):
        data = json.loads(path.read_text())
        data["benchmarks"][0]["extra_info"] |= {"dataset": dataset, "dataset_size": size}
        data["benchmarks"][1]["extra_info"] |= {"threads": threads}
        path.write_text(json.dumps(data))
    out = tmp_path / "c.md"
    assert cli.main(["compare", str(base), str(new), "--out", str(out), "--no-plot"]) == 0  # a comparison: shown
    text = out.read_text()
    apart = text.split("### Not comparable")[1]
    assert "dataset mnist-5k → fashion-mnist, dataset_size 4000 → 60000" in apart
    assert "threads 2 → 1" in apart
    assert "0 compared" in text and "2 not comparable" in text and "FAIL" not in text
    assert "not comparable: test_train_step[simple-cpu-eager-fp32-b100] (dataset" in capsys.readouterr().out
    # a gate that compared nothing gives no verdict: it fails, saying why (it passed a 10x slower run before)
    assert cli.main(["compare", str(base), str(new), "--fail-above", "25%", "--out", str(out), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "the gate has nothing to judge" in err and "2 not comparable" in err


def test_the_committed_baseline_against_the_committed_full_report_claims_no_regression_from_a_dataset_change(tmp_path, committed):
    """The Zen 4 baseline (quick subset, epochs on mnist-5k) against the full run of the same box
    (epochs on fashion-mnist): once a 17x 'regression' of the seed-loader epoch."""
    zen4 = committed / "reports" / "machines" / "AMD-EPYC-family-25-model-17-avx512bf16"
    out = tmp_path / "c.md"
    cli.main(
        ["compare", str(zen4 / "baseline.json"), str(zen4 / "benchmarks-cpu.json"), "--fail-above", "25%"]
        + ["--out", str(out), "--no-plot"]
    )
    text = out.read_text()
    apart = text.split("### Not comparable")[1]
    epoch_rows = [line for line in apart.splitlines() if "epoch-" in line or "seed-cpu" in line]
    assert epoch_rows and all("dataset mnist-5k → fashion-mnist" in line for line in epoch_rows)
    compared = text.split("### Not comparable")[0]
    assert "seed-cpu-eager-fp32-b100`" not in compared  # no epoch row was ratioed, let alone failed


def test_a_folder_gives_a_trend(tmp_path):
    history = tmp_path / "history"
    history.mkdir()
    for i, median in enumerate((0.020, 0.022, 0.030)):
        path = run_json(history / f"000{i}.json", {"eager": median, "cl": 0.016})
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data | {"datetime": f"2026-11-2{i}T12:00:00"}))
    out = tmp_path / "t.md"
    # A fourth run measured the eager step with one thread: other work, so a line of its own.
    path = run_json(history / "0003.json", {"eager": 0.060, "cl": 0.016})
    data = json.loads(path.read_text())
    data["benchmarks"][0]["extra_info"]["threads"] = 1
    path.write_text(json.dumps(data | {"datetime": "2026-11-23T12:00:00"}))
    assert cli.main(["compare", str(history), "--out", str(out)]) == 0
    eager = [line for line in out.read_text().splitlines() if "`train-step simple-cpu-eager-fp32-b100`" in line]
    assert len(eager) == 2
    [two_threads] = [line for line in eager if "20.00 ms" in line]
    assert "30.00 ms" in two_threads and "60.00 ms" not in two_threads
    assert two_threads.rstrip(" |").endswith("1.50 **slower**")  # 20 -> 30 ms, quartiles 1 ms wide: beyond noise
    [cl] = [line for line in out.read_text().splitlines() if "`train-step simple-cpu-eager-fp32-cl-b100`" in line]
    assert cl.rstrip(" |").endswith("1.00")  # unchanged: no mark


@pytest.mark.slow
def test_a_subset_never_writes_over_the_full_report(tmp_path):
    reports = tmp_path / "reports" / "machines" / machine_key(this_machine())  # this machine's evidence folder
    reports.mkdir(parents=True)
    full = reports / "benchmarks-cpu.md"
    full.write_text("the full report\n")
    # A subset with no --bench-report, with a home (paths.py) whose reports/ is the one above.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "bench"),
            "-q",
            "--benchmark-only",
            "-k",
            "ceiling and cpu-fp32-n512",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=os.environ | {"MNIST_BENCH_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert full.read_text() == "the full report\n"
    assert (reports / "benchmarks-cpu.subset.md").exists() and (reports / "benchmarks-cpu.subset.json").exists()
