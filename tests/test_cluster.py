"""Sweeps on a Ray cluster (mnist_models/cluster.py): a two-node cluster on this machine, loopback only.

The cluster (ray.cluster_utils.Cluster on 127.0.0.1: a head with no CPUs, as Ray advises for heads,
and two nodes of one CPU each) starts once for the module (about 10 s) and is shut down at its end;
each test then runs a small mnist-5k sweep on it. Skipped only where ray is not installed (pip install -e ".[cluster]").
"""

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from mnist_models.runs import cluster as ray_sweep
from mnist_models.runs.cluster import (
    cluster_address,
    device_for,
    parse_address,
    reservation,
    run_cluster_sweep,
    train_on_node,
    unplaceable,
)
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunStore, load_weights
from mnist_models.runs.sweep import sweep_configs
from mnist_models.system.errors import UsageError

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[cluster]')")

# Ray binds a machine's network address unless told this (tests/conftest.py sets it for this process).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
BASE = TrainConfig(dataset="mnist-5k", epochs=1, measure_latency=False)
SWEEP_TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster():
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "tests/conftest.py keeps Ray on loopback"
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    )
    try:
        # A head with no CPUs once made every run reserve 0 CPUs and set 0 torch threads.
        nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes(timeout=60)
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        nodes.shutdown()


def sweep_cli(address, runs, *extra, env=None):
    cmd = [
        sys.executable,
        "-m",
        "mnist_models",
        "sweep",
        "--cluster",
        "ray",
        "--address",
        address,
        "--dataset",
        "mnist-5k",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--runs-dir",
        str(runs),
        "--no-latency",
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SWEEP_TIMEOUT, env=os.environ | LOOPBACK | (env or {}))


@pytest.mark.slow
def test_a_sweep_on_two_nodes_returns_complete_records_and_a_rerun_resumes(cluster, tmp_path):
    runs = tmp_path / "runs"
    first = sweep_cli(cluster.address, runs, "--models", "simple", "deep")
    assert first.returncode == 0, first.stderr
    assert "sweep done: 2 trained, 0 already finished" in first.stdout
    records, problems = RunStore(runs).load_all()
    assert problems == [] and len(records) == 2
    for record in records:
        ray_info = record.machine["ray"]
        assert ray_info["cpus_reserved"] == 1 == ray_info["node_cpus"] == record.threads  # a whole (one-CPU) node each
        assert ray_info["node_ip"] == "127.0.0.1"
        if sys.platform.startswith("linux"):  # the worker's train() kept its freed memory too (system/allocator.py)
            assert record.machine["allocator"]["keeps_freed"] is True
        assert not record.busy_before_start.get("reason", "").startswith("packed")
        assert 0.5 < record.test_accuracy <= 1
        load_weights(record.model.name, record.weights)  # the weights came back through the driver and load
    # Two runs, two one-CPU nodes: Ray ran one on each.
    assert len({r.machine["ray"]["node_id"] for r in records}) == 2

    again = sweep_cli(cluster.address, runs, "--models", "simple", "deep")
    assert again.returncode == 0, again.stderr
    assert "sweep done: 0 trained, 2 already finished" in again.stdout
    assert RunStore(runs).load_all()[0][0].created == records[0].created  # kept, not retrained


@pytest.mark.slow
def test_a_sweep_mixing_best_and_a_plain_variant_skips_every_finished_run_on_a_rerun(cluster, tmp_path):
    """The tuned choice names 2 threads, the plain variant takes the node's reserved CPU: the driver once
    named every claim with the first config's threads only, so the plain run was saved as -t1- but
    looked for as -t2- and trained again on every rerun."""
    from mnist_models.core.variants import Variant
    from mnist_models.runs import tune

    home = tmp_path / "home"
    best = tune.Candidate("simple", 2, Variant("cpu", "off", "fp32", True, True))
    result = tune.Tuning({}, {}, {"simple": best}, {"simple": 1.0}, [], [], 0.0)
    tune.save_tuning(result, home / "reports" / "machines")  # where tune stores it under that home
    env = {"MNIST_BENCH_HOME": str(home)}
    runs = tmp_path / "runs"
    args = ("--models", "simple", "--variants", "best", "seed-eager-fp32")
    first = sweep_cli(cluster.address, runs, *args, env=env)
    assert first.returncode == 0, first.stderr
    assert "sweep done: 2 trained, 0 already finished" in first.stdout
    names = sorted(r.name for r in RunStore(runs).load_all()[0])
    assert names == ["simple-seed-cpu-eager-fp32-t1-e1-s1", "simple-tensor-cpu-eager-fp32-cl-fast-t2-e1-s1"]
    again = sweep_cli(cluster.address, runs, *args, env=env)
    assert again.returncode == 0, again.stderr
    assert "sweep done: 0 trained, 2 already finished" in again.stdout


@pytest.mark.slow
def test_a_run_that_raises_fails_alone_and_the_sweep_says_so(cluster, tmp_path):
    [good] = sweep_configs(BASE, ["simple"], ["tensor-eager-fp32"], [1])
    bad = replace(good, lr=1e9, seed=2)  # diverges: a TrainingDiverged inside the task
    counts = run_cluster_sweep([good, bad], tmp_path, address=cluster.address, progress=False, log=lambda line: None)
    assert counts["trained"] == 1
    [(name, reason)] = counts["failed"]
    assert name == bad.resolve(1).name and "training diverged" in reason
    [record], _ = RunStore(tmp_path).load_all()
    assert record.config.seed == 1
    assert not list(tmp_path.glob("*/.*.claim")), "claims are released, also for the failed run"
    assert not ray.is_initialized(), "the sweep ends the connection it started"


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_sweep_completes(cluster, tmp_path):
    marker = tmp_path / "killed-once"

    def dies_once(config, key, dataset, cpus, driver_code=None):  # a worker process killed mid-run, once
        if not marker.exists():
            marker.touch()
            os._exit(9)
        return train_on_node(config, key, dataset, cpus, driver_code)

    configs = sweep_configs(BASE, ["simple"], ["tensor-eager-fp32"], [1])
    counts = run_cluster_sweep(
        configs, tmp_path / "runs", address=cluster.address, progress=False, log=lambda line: None, task=dies_once
    )
    assert marker.exists(), "the first attempt died"
    assert counts["trained"] == 1 and counts["failed"] == []
    assert len(RunStore(tmp_path / "runs").load_all()[0]) == 1

    # Without retries the same death is the run's failure, named, and nothing is written.
    marker.unlink()
    other = sweep_configs(BASE, ["simple"], ["tensor-eager-fp32"], [2])
    counts = run_cluster_sweep(
        other, tmp_path / "runs", address=cluster.address, max_retries=0, progress=False, log=lambda line: None, task=dies_once
    )
    [(name, reason)] = counts["failed"]
    assert name.endswith("-s2") and "died" in reason.lower()
    assert len(RunStore(tmp_path / "runs").load_all()[0]) == 1


def test_runs_reserve_a_whole_node_unless_packed():
    lines = []
    assert reservation([4, 4], None, lines.append) == 4 and lines == []
    assert reservation([0, 4, 4], None, lines.append) == 4 and lines == []  # a head without CPUs runs nothing
    assert reservation([2, 8], None, lines.append) == 2 and "differ in CPUs" in lines[0]
    assert reservation([2, 8], 1, lines.append) == 1
    with pytest.raises(UsageError, match="more than any node has"):
        reservation([2, 2], 3, lines.append)


def test_addresses_ray_accepts_are_accepted(monkeypatch):
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)  # IPv6
    assert parse_address("ray://head.example:10001") == ("head.example", 10001)  # Ray Client
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_address("head-without-port")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) == "local" and cluster_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # Ray's own convention, once ignored
    assert cluster_address(None) == "10.0.0.5:6379" and cluster_address("local") == "local"


def test_a_runs_device_is_resolved_for_the_cluster_not_the_driver():
    cpu_only, with_gpu = [(0, 0), (4, 0)], [(0, 0), (4, 0), (8, 1)]
    auto = TrainConfig(dataset="mnist-5k")
    assert device_for(auto, cpu_only) == "cpu" and device_for(auto, with_gpu) == "cuda"
    cuda = TrainConfig(dataset="mnist-5k", variant=replace(auto.variant, device="cuda"))
    assert device_for(cuda, cpu_only) == "cuda"  # the driver may have no GPU: the nodes decide
    assert cuda.resolve(1, device_for(cuda, cpu_only)).variant.device == "cuda"  # no DeviceError on the driver
    assert unplaceable(4, 1, cpu_only) == "it needs a GPU and no live node of the Ray cluster has one"
    assert unplaceable(4, 1, with_gpu) is None and unplaceable(4, 0, cpu_only) is None
    assert "reserves 16 CPUs" in unplaceable(16, 0, with_gpu)


def test_a_node_with_other_code_refuses_to_train_in_one_line(small5k):
    config = TrainConfig(dataset="mnist-5k", epochs=1, measure_latency=False)
    with pytest.raises(UsageError, match="this node runs code .*, the driver 0000000: install the driver's commit"):
        train_on_node(config, config.resolve(1), small5k, 1, driver_code="0000000")


@pytest.mark.slow
def test_cuda_runs_on_a_cluster_without_gpus_and_a_code_mismatch_fail_in_one_line(cluster, tmp_path, monkeypatch):
    """A CUDA run on a CPU-only cluster was refused by the driver's own device check (or, resolved on a
    GPU driver, waited for ever for a GPU no node has); a node on other code trained anyway."""
    cuda = sweep_configs(replace(BASE, variant=replace(BASE.variant, device="cuda")), ["simple"], ["seed-eager-fp32"], [1])
    counts = run_cluster_sweep(cuda, tmp_path / "a", address=cluster.address, progress=False, log=lambda line: None)
    [(name, reason)] = counts["failed"]
    assert "-cuda-" in name and reason == "cannot be placed: it needs a GPU and no live node of the Ray cluster has one"
    monkeypatch.setattr(ray_sweep, "code_version", lambda: "0000000")  # the driver's version; the nodes run the real one
    cpu = sweep_configs(BASE, ["simple"], ["seed-eager-fp32"], [1])
    counts = run_cluster_sweep(cpu, tmp_path / "b", address=cluster.address, progress=False, log=lambda line: None)
    [(name, reason)] = counts["failed"]
    assert "the driver 0000000: install the driver's commit on every node" in reason
    assert not list((tmp_path / "b").rglob("*.json"))
