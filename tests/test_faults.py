"""Bad input and faults: nothing finished is lost, nothing is silently replaced, every error is one line.

Each test names the defect it guards (see docs/DESIGN.md, Records). Training runs are one epoch of
mnist-5k through the tensor loader, a second or two each.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_models import cli
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunStore, load_record
from mnist_models.system import atomic
from mnist_models.system.machine import machine_key, this_machine

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "helpers"
FAST = ["--dataset", "mnist-5k", "--epochs", "1", "--loader", "tensor", "--no-progress", "--no-latency"]


def main_ok(capsys, argv):
    assert cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr()


def one_line_error(capsys, argv, code=2):
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's own checks exit here
        status = exc.code
    assert status == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def sweep_args(runs_dir: Path, *seeds: str) -> list[str]:
    """The one-model, one-variant sweep the tests run (seed 1 unless told)."""
    return [
        "sweep",
        "--models",
        "simple",
        "--variants",
        "tensor-eager-fp32",
        "--seeds",
        *(seeds or ("1",)),
        *FAST,
        "--runs-dir",
        str(runs_dir),
    ]


def dead_pid() -> int:
    """The pid of a process that has exited (a killed writer, for the clean-up tests)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def records_in(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(Path(folder).rglob("*.json"))}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".claim"))]


# --- 1. a finished run is never replaced by a different one ----------------------------------


@pytest.mark.slow
def test_runs_of_other_recipes_get_their_own_records(capsys, tmp_path):
    main_ok(capsys, ["train", *FAST, "--seed", "5", "--runs-dir", str(tmp_path)])
    main_ok(capsys, ["train", *FAST, "--seed", "5", "--epochs", "2", "--runs-dir", str(tmp_path)])
    main_ok(capsys, ["train", *FAST, "--seed", "5", "--lr", "0.002", "--runs-dir", str(tmp_path)])
    records = [load_record(p) for p in (tmp_path / "mnist-5k").glob("*.json")]
    assert sorted((r.config.epochs, r.config.lr) for r in records) == [(1, 0.001), (1, 0.002), (2, 0.001)]
    assert len(list((tmp_path / "mnist-5k" / "weights").glob("*.pt"))) == 3


def test_the_same_recipe_again_is_refused_unless_overwrite(capsys, tmp_path):
    main_ok(capsys, ["train", *FAST, "--runs-dir", str(tmp_path)])
    before = records_in(tmp_path)
    err = one_line_error(capsys, ["train", *FAST, "--runs-dir", str(tmp_path)])
    assert "already stored" in err and "--overwrite" in err
    assert records_in(tmp_path) == before
    main_ok(capsys, ["train", *FAST, "--runs-dir", str(tmp_path), "--overwrite"])
    (name,) = before
    assert records_in(tmp_path)[name] != before[name]  # a new run (new timings), by request


@pytest.mark.slow
def test_a_sweep_of_another_recipe_trains_instead_of_skipping(capsys, tmp_path):
    sweep = sweep_args(tmp_path)
    assert "1 trained" in main_ok(capsys, sweep).out
    assert "1 trained" in main_ok(capsys, [*sweep, "--epochs", "2"]).out
    assert "0 trained, 1 already finished" in main_ok(capsys, [*sweep, "--epochs", "2"]).out


@pytest.mark.slow
def test_committed_evidence_is_not_replaced_by_the_readme_command(capsys, tmp_path):
    runs = tmp_path / "runs"
    zen5 = ROOT / "reports" / "machines" / "AMD-EPYC-family-26-model-2-avx512bf16" / "runs" / "mnist-5k"
    shutil.copytree(zen5, runs / "mnist-5k", ignore=shutil.ignore_patterns("weights"))
    before = records_in(runs)
    # The README's train command, on the committed recipe (the sweeps ran with one thread): refused at once.
    err = one_line_error(
        capsys, ["train", "--model", "simple", "--dataset", "mnist-5k", "--threads", "1", "--runs-dir", str(runs)]
    )
    assert "simple-seed-cpu-eager-fp32-s777.json" in err
    # The same with torch's thread count, or a shorter schedule, is another recipe: a new record beside them.
    main_ok(
        capsys, ["train", "--model", "simple", "--dataset", "mnist-5k", "--epochs", "1", "--no-progress", "--runs-dir", str(runs)]
    )
    after = records_in(runs)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1


# --- 2. an interrupted benchmark session never overwrites the complete report ----------------


@pytest.mark.slow
def test_interrupted_benchmarks_write_a_partial_report_elsewhere(tmp_path):
    report = tmp_path / "bench.md"
    report.write_text("the complete report\n")
    env = {**os.environ, "PYTHONPATH": str(HELPERS)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "-q",
            "--benchmark-only",
            "-k",
            "ceiling and cpu-fp32",
            "-p",
            "interrupt_after_first",
            "--bench-report",
            str(report),
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2, result.stdout[-2000:]  # pytest's "interrupted"
    assert report.read_text() == "the complete report\n"
    partial = tmp_path / "bench.partial.md"
    assert "**PARTIAL REPORT**" in partial.read_text().split("\n## ")[0]
    assert len(json.loads(partial.with_suffix(".json").read_text())["benchmarks"]) == 1
    assert "Traceback" not in result.stdout + result.stderr


# --- 3. records are input: no path escapes, no markdown injection ----------------------------


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    assert cli.main(["train", *FAST, "--runs-dir", str(folder)]) == 0
    (path,) = (folder / "mnist-5k").glob("*.json")
    return folder, json.loads(path.read_text())


def test_a_record_cannot_write_outside_the_report_folder(capsys, tmp_path, one_run):
    folder, record = one_run
    runs = tmp_path / "runs"
    shutil.copytree(folder, runs)
    evil = dict(record, dataset={**record["dataset"], "name": "x/../../../../escape-target/pwn"})
    evil["config"] = {**record["config"], "dataset": "x/../../../../escape-target/pwn"}
    (runs / "mnist-5k" / "evil.json").write_text(json.dumps(evil))
    out = tmp_path / "out" / "report.md"
    assert cli.main(["report", "--runs-dir", str(runs), "--out", str(out)]) == 0
    assert "evil.json" in capsys.readouterr().err  # named, skipped
    assert not list(tmp_path.rglob("pwn*")) and not (tmp_path.parent / "escape-target").exists()
    key = machine_key(this_machine())
    assert sorted(p.name for p in out.parent.iterdir()) == [
        f"accuracy-vs-cost-mnist-5k-{key}.png",
        "report.md",
        "time-to-accuracy-mnist-5k.png",
        "time-to-accuracy.md",
    ]


def test_record_text_is_escaped_in_the_markdown(tmp_path, one_run):
    folder, record = one_run
    runs = tmp_path / "runs"
    shutil.copytree(folder, runs)
    (path,) = (runs / "mnist-5k").glob("*.json")
    record = dict(record, machine={**record["machine"], "cpu": "CPU | x\n# Heading <script>alert(1)</script> [link](http://x)"})
    path.write_text(json.dumps(record))
    out = tmp_path / "report.md"
    assert cli.main(["report", "--runs-dir", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script>" not in text and "[link](" not in text and "\n# Heading" not in text
    assert r"CPU \| x \# Heading \<script\>" in text


# --- 4. a record that does not load is trained again, and kept aside -------------------------


@pytest.mark.parametrize("redo_contended", [False, True])
def test_a_sweep_retrains_a_corrupt_record_and_keeps_it_aside(capsys, tmp_path, redo_contended):
    sweep = sweep_args(tmp_path)
    main_ok(capsys, sweep)
    (path,) = (tmp_path / "mnist-5k").glob("*.json")
    path.write_text("")  # emptied by a crash, say
    out = main_ok(capsys, [*sweep, *(["--redo-contended"] if redo_contended else [])]).out
    assert "1 trained" in out and f"kept aside as {path.name}.bad" in out
    assert load_record(path).test_accuracy > 0.1
    assert (path.parent / f"{path.name}.bad").read_text() == ""


# --- 5. write errors are one line, and a run's files land all or nothing ---------------------


@pytest.mark.parametrize("failing", [".pt", ".json"])
def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, monkeypatch, failing):
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split(".")[-3:-2] and failing in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    err = one_line_error(capsys, ["train", *FAST, "--runs-dir", str(tmp_path)])
    assert "No space left on device" in err and "cannot write" in err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no weights without record, no temp file


# --- 6, 7. reports skip what they cannot read, and say so ------------------------------------


def test_report_skips_wrong_shaped_records_and_reports_the_rest(capsys, tmp_path, one_run):
    folder, record = one_run
    runs = tmp_path / "runs"
    shutil.copytree(folder, runs)
    bad = {
        "no-loader.json": dict(record, config={k: v for k, v in record["config"].items() if k != "loader"}),
        "dataset-string.json": dict(record, dataset="mnist-5k"),
        "no-epochs.json": dict(record, epochs=[]),
    }
    for name, data in bad.items():
        (runs / "mnist-5k" / name).write_text(json.dumps(data))
    out = tmp_path / "r.md"
    assert cli.main(["report", "--runs-dir", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert all(name in err for name in bad)
    assert "simple tensor-loader cpu-eager-fp32" in out.read_text()


def test_report_reads_odd_benchmark_json(capsys, tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text(
        json.dumps(
            {
                "benchmarks": [
                    {"name": "no stats"},
                    {
                        "name": "x",
                        "stats": {"median": 0.1, "iqr": 0.01, "rounds": 3},
                        "extra_info": {"suite": "forward", "batch": "many"},
                    },
                ]
            }
        )
    )
    out = tmp_path / "b.md"
    assert cli.main(["report", "--bench-json", str(odd), "--bench-out", str(out), "--no-accuracy"]) == 0
    assert "1 entries without a name and timings were left out" in out.read_text()
    odd.write_text(json.dumps({"benchmarks": {"not": "a list"}}))
    assert "no 'benchmarks' list" in one_line_error(
        capsys, ["report", "--bench-json", str(odd), "--bench-out", str(out), "--no-accuracy"]
    )


# --- 8, 9. numbers out of range, divergence, file modes, empty folders, claims ---------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "10000"], "far above"),
        (["--seed", str(2**64)], "64-bit range"),
        (["--seed", "-1"], "must be from 0"),
        (["--lr", "nan"], "learning rate must be positive"),
        (["--lr", "-0.1"], "learning rate must be positive"),
    ],
)
def test_numbers_out_of_range_are_one_line(capsys, tmp_path, argv, message):
    assert message in one_line_error(capsys, ["train", *FAST, *argv, "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_a_huge_learning_rate_is_a_divergence_not_a_result(capsys, tmp_path):
    err = one_line_error(capsys, ["train", *FAST, "--lr", "1e9", "--runs-dir", str(tmp_path / "runs")], code=3)
    assert "diverged" in err and "nothing was written" in err
    assert not (tmp_path / "runs").exists()  # no empty folder left behind either


def test_a_failed_sweep_leaves_no_empty_folders(capsys, tmp_path):
    runs = tmp_path / "runs"
    one_line_error(capsys, [*sweep_args(runs), "--lr", "1e9"], code=3)
    assert not runs.exists()


def test_outputs_are_readable_like_any_other_file(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        main_ok(capsys, ["train", *FAST, "--runs-dir", str(tmp_path)])
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files)


def test_two_sweeps_split_the_work(capsys, tmp_path):
    config = TrainConfig(dataset="mnist-5k", loader="tensor", epochs=1, seed=1)
    store = RunStore(tmp_path)
    assert store.claim(config.resolve())  # another live sweep (this process) holds seed 1
    sweep = sweep_args(tmp_path, "1", "2")
    out = main_ok(capsys, sweep).out
    assert "1 trained" in out and "1 being trained by another sweep" in out
    assert [load_record(p).config.seed for p in (tmp_path / "mnist-5k").glob("*.json")] == [2]


def test_a_dead_sweeps_claim_and_temp_files_are_cleaned(capsys, tmp_path):
    folder = tmp_path / "mnist-5k"
    (folder / "weights").mkdir(parents=True)
    dead = dead_pid()
    config = TrainConfig(dataset="mnist-5k", loader="tensor", epochs=1, seed=1)
    (folder / f".{config.resolve().name}.claim").write_text(json.dumps({"pid": dead, "host": os.uname().nodename}))
    (folder / f".x.json.{dead}.abc123.tmp").write_text("half")
    (folder / "weights" / f".x.pt.{dead}.abc123.tmp").write_bytes(b"half")
    mine = folder / f".y.json.{os.getpid()}.abc123.tmp"  # a live writer's temp file stays
    mine.write_text("in progress")
    out = main_ok(
        capsys,
        sweep_args(tmp_path),
    )
    assert "1 trained" in out.out
    assert sorted(leftovers(tmp_path)) == [mine.name]


# --- the fault test: SIGKILL during the writes, then resume ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["weights", "record", "between"])
def test_a_sweep_killed_while_saving_resumes_without_loss_or_repeat(tmp_path, where):
    sweep = sweep_args(tmp_path, "1", "2")
    killed = subprocess.run(
        [sys.executable, str(HELPERS / "kill_during_save.py"), where, "2", *sweep],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = records_in(tmp_path)
    assert len(first) == 1  # the first run finished before the kill; the second did not
    resumed = subprocess.run(
        [sys.executable, "-m", "mnist_models.cli", *sweep], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "sweep done: 1 trained, 1 already finished" in resumed.stdout  # nothing trained twice
    after = records_in(tmp_path)
    assert {k: after[k] for k in first} == first and len(after) == 2  # nothing finished lost
    assert leftovers(tmp_path) == []  # no temp file, no claim
    weights = sorted(p.stem for p in (tmp_path / "mnist-5k" / "weights").iterdir())
    assert weights == sorted(Path(k).stem for k in after)  # no orphan: one weights file per record
    for name in after:
        record = load_record(tmp_path / "mnist-5k" / name)
        state = torch.load(record.weights, weights_only=True)
        assert set(state) == {"layer1.0.weight", "layer1.0.bias", "layer2.0.weight", "layer2.0.bias", "fc.weight", "fc.bias"}


def test_stale_temp_files_are_found_by_pid(tmp_path):
    dead = dead_pid()
    (tmp_path / f".a.json.{dead}.q1.tmp").write_text("")
    (tmp_path / f".b.json.{os.getpid()}.q2.tmp").write_text("")
    (tmp_path / "c.json").write_text("")
    assert [p.name for p in atomic.stale_temp_files(tmp_path)] == [f".a.json.{dead}.q1.tmp"]
