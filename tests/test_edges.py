"""Faults at the edges: a stray environment, reused pids, two commands on one folder, a full disk, a
corrupt archive, a dead worker, a hung service, signals, and no verdict from nothing. Each gives one
line, the exit code it should, and loses nothing."""

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from mnist_models import cli
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunStore
from mnist_models.system import atomic
from mnist_models.system.errors import DataError, UsageError, WriteError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--dataset", "mnist-5k", "--epochs", "1", "--loader", "tensor", "--no-progress", "--no-latency"]
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def one_line_error(capsys, argv, code=2) -> str:
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*TORCHRUN_VARS, "OMP_NUM_THREADS", "TORCHELASTIC_MAX_RESTARTS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- a stray environment is read once, with the flags' rules -------------------------------------


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "0"}, "looks like a stray torchrun environment"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "two"}, "$WORLD_SIZE must be an integer >= 1, got 'two'"),
        ({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "do not fit $WORLD_SIZE=2"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "$MASTER_ADDR is not set"),
        (
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "notaport"},
            "$MASTER_PORT must be an integer from 1 to 65535, got 'notaport'",
        ),
        (
            {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500",
                "TORCHELASTIC_MAX_RESTARTS": "2",
            },
            "elastic restarts (torchrun --max-restarts) are not supported",
        ),
        ({"OMP_NUM_THREADS": "0"}, "$OMP_NUM_THREADS must be a positive integer, got '0'"),
        ({"OMP_NUM_THREADS": "two"}, "$OMP_NUM_THREADS must be a positive integer"),
        ({"OMP_NUM_THREADS": "100000"}, "$OMP_NUM_THREADS=100000: 100000 threads is far above"),
    ],
)
def test_a_stray_environment_is_one_line_before_any_work(capsys, clean_env, tmp_path, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    err = one_line_error(capsys, ["train", "--model", "simple", *FAST, "--runs-dir", str(tmp_path)])
    assert message in err
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


# --- claims: a reused pid, a train beside a sweep ------------------------------------------------


def test_a_claim_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    from mnist_models.runs.train import run_key

    store = RunStore(tmp_path)
    key = run_key(TrainConfig(model="simple", dataset="mnist-5k", epochs=1))
    claim = store._claim_path(key)
    claim.parent.mkdir(parents=True)
    live = os.getppid()  # a live process that is not the claim's writer
    claim.write_text(json.dumps({"pid": live, "host": socket.gethostname(), "started": "1"}))  # started at tick 1: not it
    assert store.claim(key)  # the dead sweep's claim is taken over, not honoured for ever
    store.release(key)
    claim.write_text(json.dumps({"pid": live, "host": socket.gethostname(), "started": atomic.process_start(live)}))
    assert not store.claim(key)  # the same live process: its claim holds


def test_a_train_refuses_a_run_that_a_sweep_is_training(capsys, tmp_path):
    from mnist_models.runs.train import run_key

    config = TrainConfig(model="simple", dataset="mnist-5k", epochs=1, loader="tensor")
    store = RunStore(tmp_path)
    assert store.claim(run_key(config))  # this process plays the sweep that holds the run
    err = one_line_error(capsys, ["train", "--model", "simple", *FAST, "--runs-dir", str(tmp_path)])
    assert "is being trained by pid" in err and "right now" in err


def test_a_sweep_skips_a_run_that_another_command_finished_meanwhile(tmp_path):
    from mnist_models.runs.sweep import new_counts, store_result

    class Stored:
        path = tmp_path / "run.json"

    class Plan:
        path, replaces = None, None

    class Record:
        name, replaces = "simple-run", None

    class Store:
        def save(self, *args, **kwargs):
            from mnist_models.system.errors import RunExists

            raise RunExists(f"a finished run is already stored at {Stored.path}")

    counts, lines = new_counts(0, {}), []
    assert store_result(Store(), Plan(), Record(), {}, counts, lines.append) is None
    assert counts["skipped"] == 1 and "another command finished this run meanwhile" in lines[0]


# --- writes and data ----------------------------------------------------------------------------


def test_torch_save_on_a_full_disk_is_a_write_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import torch

    def full(obj, fh):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=r"cannot write .*weights\.pt: the write failed"):
        atomic.save_torch(tmp_path / "weights.pt", {"w": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_dataset_archive_is_a_data_error(tmp_path, monkeypatch):
    from mnist_models.core import data

    debian = tmp_path / "debian"
    debian.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        good = gzip.compress(b"\x00" * 4096)
        (debian / f"{name}.gz").write_bytes(good[:20] + b"\xff" * 40 + good[60:])  # a damaged deflate stream
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", debian)
    with pytest.raises(DataError, match="corrupt file"):
        data.load_dataset("fashion-mnist", tmp_path / "root", download=False)


def test_a_failed_download_names_its_cause(tmp_path, monkeypatch):
    import torchvision.datasets

    from mnist_models.core import data

    def offline(*args, **kwargs):
        try:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        except OSError as cause:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:") from cause

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as caught:
        data.load_dataset("mnist", tmp_path)
    assert "Temporary failure in name resolution" in str(caught.value) and "--dataset mnist-5k" in str(caught.value)


# --- reports count seeds; no verdict from nothing -----------------------------------------------


def test_the_accuracy_report_counts_seeds_not_records():
    from mnist_models.core.variants import Variant
    from mnist_models.reporting.accuracy import RECIPE_KEYS, summarise_groups

    common = {"model": "simple", "loader": "seed", "tag": "eager-fp32", "epochs_cfg": 15, "batch_size": 100, "lr": 1e-3}
    common |= {"schedule": "const", "ranks": 1, "sec_per_epoch": 1.0, "train_seconds": 15.0, "lat1_ms": 1.0}
    common |= {"lat1000_ms": 9.0, "params": 1, "flops": 1, "peak_mb": 1.0, "contended": False, "variant": Variant("cpu")}
    rows = [  # seed 1 trained at 2 and at 1 thread(s), seed 2 once
        {**common, "seed": 1, "threads": 2, "accuracy": 0.90, "seed_style": 0.80},
        {**common, "seed": 1, "threads": 1, "accuracy": 0.90, "seed_style": 0.80},
        {**common, "seed": 2, "threads": 2, "accuracy": 0.92, "seed_style": 0.82},
    ]
    group = summarise_groups(pd.DataFrame(rows), RECIPE_KEYS).iloc[0]
    assert group["n"] == 2 and group["records"] == 3 and group["seeds"] == [1, 2]
    assert group["acc_mean"] == pytest.approx(0.91) and group["acc_std"] == pytest.approx(0.0141421, abs=1e-6)


def test_a_benchmark_json_with_no_usable_row_is_an_error(capsys, tmp_path):
    path = tmp_path / "newer.json"
    path.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"median": "soon"}, "extra_info": {}}]}))
    err = one_line_error(capsys, ["report", "--bench-json", str(path), "--bench-out", str(tmp_path / "b.md"), "--no-accuracy"])
    assert "holds no benchmark row this version can read" in err and not (tmp_path / "b.md").exists()


def test_a_malformed_tune_pick_is_not_a_missing_one(tmp_path):
    from mnist_models.runs.tune import load_best, tune_path

    path = tune_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"best": {"simple": {"model": "simple", "variant": {}}}}))  # no threads
    with pytest.raises(UsageError, match="the simple net's pick cannot be read"):
        load_best("simple", tmp_path)
    with pytest.raises(UsageError, match="has no tuned variant for the deep net"):
        load_best("deep", tmp_path)


def test_the_same_code_has_one_fingerprint_and_an_edit_changes_it(tmp_path):
    import shutil

    from mnist_models.system.machine import code_fingerprint

    package = ROOT / "mnist_models"
    copy = tmp_path / "mnist_models"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_fingerprint() == code_fingerprint(copy)
    (copy / "core" / "data.py").write_text((copy / "core" / "data.py").read_text() + "\n# another shuffle\n")
    assert code_fingerprint(copy) != code_fingerprint()


# --- processes: a dead A/B worker, a hung Ray head, SIGTERM --------------------------------------


@pytest.mark.slow
def test_an_ab_worker_killed_mid_comparison_is_one_line(tmp_path):
    from mnist_models.runs.ab import Side, Worker

    worker = Worker(Side("A", threads=1))
    worker.wait_ready()
    assert worker.block(1) > 0
    worker.proc.kill()
    worker.proc.wait(timeout=10)
    with pytest.raises(UsageError, match="the A/B worker for A (died|failed to time a block)"):
        worker.block(1)


@pytest.mark.slow
def test_a_ray_head_that_never_answers_is_a_bounded_wait(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[cluster]')")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept_and_say_nothing():
        server.settimeout(60)
        try:
            while True:
                accepted.append(server.accept()[0])  # held open, never answered
        except OSError:
            pass

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    port = server.getsockname()[1]
    env = os.environ | {"MNIST_BENCH_RAY_CONNECT_TIMEOUT": "5", "MNIST_BENCH_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "mnist_models", "sweep", "--cluster", "ray", "--address", f"127.0.0.1:{port}"]
    cmd += ["--models", "simple", "--seeds", "1", *FAST, "--runs-dir", str(tmp_path / "runs")]
    started = time.monotonic()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did not answer within 5 s" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 90


@pytest.mark.slow
def test_sigterm_on_a_training_run_is_one_line_and_leaves_no_claim(tmp_path):
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "mnist_models", "train", "--model", "deep", "--dataset", "mnist-5k", "--epochs", "3"]
    cmd += ["--loader", "seed", "--no-latency", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        claim = None
        while time.monotonic() < deadline and claim is None and proc.poll() is None:
            claim = next((tmp_path / "runs").rglob(".*.claim"), None) if (tmp_path / "runs").exists() else None
            time.sleep(0.2)
        assert claim is not None, "the run never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.claim")) and not list((tmp_path / "runs").rglob("*.json"))


@pytest.mark.slow
def test_ctrl_c_on_a_ddp_job_ends_every_rank_with_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the launcher and both ranks."""
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "mnist_models", "train", "--nproc", "2", "--model", "simple", "--dataset", "mnist-5k"]
    cmd += ["--epochs", "5", "--no-latency", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (tmp_path / "runs").exists() and next((tmp_path / "runs").rglob(".*.claim"), None):  # rank 0 is training
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    assert "mnist-bench: error: interrupted by SIGINT" in err or "mnist-bench: interrupted" in err, err[-3000:]
    assert left == []  # no rank outlives the job
    assert not list((tmp_path / "runs").rglob("*.json"))  # nothing of the unfinished run


def test_a_trial_run_cut_short_beside_full_runs_is_left_out_of_the_accuracy_report():
    from types import SimpleNamespace

    from mnist_models.reporting.accuracy import without_trials

    def run(epochs, seed, model="simple"):
        config = SimpleNamespace(model=model, loader="seed", batch_size=100, lr=1e-3, schedule="const", ranks=1, epochs=epochs)
        return SimpleNamespace(
            config=config, dataset=SimpleNamespace(name="fashion-mnist"), variant=SimpleNamespace(tag="eager-fp32"), seed=seed
        )

    full, trial, alone = run(15, 1), run(1, 2), run(2, 3, model="deep")  # deep has no full-length run: not a trial
    kept, left = without_trials([full, trial, alone])
    assert kept == [full, alone] and left == [trial]


def test_a_worktree_leaves_no_temporary_folder_behind():
    from mnist_models.runs.ab import checkout_of

    with checkout_of("HEAD") as folder:
        parent = folder.parent
        assert (folder / "mnist_models").is_dir()
    assert not parent.exists()  # the worktree and the temporary folder that held it
