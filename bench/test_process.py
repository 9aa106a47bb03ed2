"""The whole `mnist-bench train` process for one epoch, as a user times it, beside a process that
runs the seed's pipeline (its DataLoader, eager fp32) the same way, alternated in one benchmark run.

Each process starts cold: Python, torch's import, the dataset, the net, one epoch, both
evaluations and the record. The seed-pipeline process keeps the C library's own malloc (as the
seed's script runs); the timed one has the project's (system/allocator.py). The row times the fast
process (this machine's tuned pick, else the fp32 fast path); the seed-pipeline process runs before
it in even rounds and after it in odd ones (S F, F S, ...), and the row keeps its times and the
paired speedup with its order-statistic interval over the pairs, at the level it has (core/stats.py). Run it alone, like every
benchmark.
"""

import os
import subprocess
import sys
import time

import pytest
import torch

from mnist_models.core.bench_row import BenchIdentity
from mnist_models.core.nets import build_model
from mnist_models.core.seed_recipe import SEED_BATCH_SIZE
from mnist_models.core.stats import paired_ratio
from mnist_models.core.timing import describe
from mnist_models.core.variants import Variant
from mnist_models.runs.tune import load_best
from mnist_models.system.allocator import MODE_ENV
from mnist_models.system.errors import UsageError
from mnist_models.system.machine import native_bf16

SEED_PIPELINE = "seed-eager-fp32"
FAST_PATH = ("tensor-eager-fp32-cl-fast", Variant("cpu", channels_last=True, fast=True), "tensor")
FAST_PATH_BF16 = ("tensor-eager-bf16-cl-fast", Variant("cpu", precision="bf16", channels_last=True, fast=True), "tensor")


def _fast_choice(model: str) -> tuple[str, Variant, str]:
    """(spec for train --variant, its variant, its loader): the tuned pick where tune ran here, else the
    fast path in the fastest precision this CPU has natively (bf16 on AVX-512 BF16 or AMX)."""
    try:
        best = load_best(model)
    except UsageError:
        return FAST_PATH_BF16 if native_bf16() else FAST_PATH
    return "best", best.variant, best.loader


@pytest.mark.parametrize("model", ["simple", "deep"])
def test_train_process(benchmark, model, epoch_dataset, request, tmp_path):
    if request.config.getoption("benchmark_disable") and model == "deep":
        pytest.skip("smoke run: the simple net's processes run the body (each is a whole training process)")
    spec, variant, loader = _fast_choice(model)
    seed_times: list[float] = []

    def train_process(variant_spec: str, folder: str) -> float:
        # a CPU benchmark: on a GPU machine too the processes train on the CPU, as its label says
        cmd = [
            sys.executable,
            "-m",
            "mnist_models",
            "train",
            "--model",
            model,
            "--dataset",
            epoch_dataset.name,
            "--device",
            "cpu",
        ]
        cmd += ["--epochs", "1", "--variant", variant_spec, "--runs-dir", str(tmp_path / folder), "--overwrite"]
        cmd += ["--no-latency", "--no-progress"]
        if request.config.getoption("--bench-data-root"):
            cmd += ["--data-root", request.config.getoption("--bench-data-root")]
        # The seed's way includes a plain process: the C library's own malloc (system/allocator.py).
        env = os.environ | {MODE_ENV: "system" if variant_spec == SEED_PIPELINE else "keep"}
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return time.perf_counter() - started

    rounds = {"i": 0}

    def seed_first():  # even rounds: the seed pipeline's process, then the timed one
        if rounds["i"] % 2 == 0:
            seed_times.append(train_process(SEED_PIPELINE, "seed"))

    def seed_after():  # odd rounds: the timed one, then the seed pipeline's process
        if rounds["i"] % 2 == 1:
            seed_times.append(train_process(SEED_PIPELINE, "seed"))
        rounds["i"] += 1

    images = len(epoch_dataset.train) // SEED_BATCH_SIZE * SEED_BATCH_SIZE
    ident = BenchIdentity(
        suite="process",
        variant=variant,
        model=model,
        batch=SEED_BATCH_SIZE,
        threads=torch.get_num_threads(),
        loader=loader,
        dataset=epoch_dataset.name,
        dataset_size=len(epoch_dataset.train),
    )
    describe(benchmark, ident, build_model(model).train_flops_per_image() * images, images, pinned=False, spec=spec)
    fast_times: list[float] = []

    def timed() -> float:
        fast_times.append(train_process(spec, "fast"))
        return fast_times[-1]

    benchmark.pedantic(timed, setup=seed_first, teardown=seed_after, rounds=request.config.getoption("--bench-epoch-rounds"))
    pairs = list(zip(seed_times, fast_times))
    benchmark.extra_info["seed_process_s"] = seed_times
    if len(pairs) >= 2:
        ratio = paired_ratio(pairs)  # fast / seed per pair: its inverse is the speedup
        benchmark.extra_info.update(
            speedup_vs_seed_process=1 / ratio.estimate,
            speedup_low=1 / ratio.high,
            speedup_high=1 / ratio.low,
            speedup_pairs=ratio.rounds,
            speedup_level=ratio.level,
        )
