"""Data-parallel scaling: a DDP train step with 1, 2, ... ranks up to the cores (gloo, loopback).

Each case is one torchrun job (`python -m mnist_models.scale.scaling`) in which every rank times its
steps; a step's time is its slowest rank's, and the rounds of the benchmark replay those in-rank times
(a replay clock), so process start-up and rendezvous stay out of the numbers. The cases per net come
from mnist_models.scale.scaling.scaling_cases: 1 rank x t threads for every t the ranks use (the
baselines of the efficiencies), 1 rank x all cores (the process the ranks compete with), and N ranks x
cores/N threads, strong (global batch 100, only where N divides it) and weak (100 per rank).

extra_info carries the identity (ranks, threads per rank, global batch), images/s, the step split into
compute, waiting for the slowest rank and exposed communication, and any straggler; the report
computes efficiencies from the baselines measured in the same session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from mnist_models.core.bench_row import BenchIdentity
from mnist_models.core.nets import build_model
from mnist_models.core.timing import describe, rates
from mnist_models.core.variants import Variant, render_tag
from mnist_models.scale.scaling import scaling_cases
from mnist_models.system.machine import usable_cpus

CORES = usable_cpus()


class ReplayClock:
    """A timer for pytest-benchmark that advances by the step times a rank measured."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[float] = []

    def __call__(self) -> float:
        return self.now

    def replay(self) -> None:
        self.now += self.pending.pop(0)


CLOCK = ReplayClock()


@dataclass(frozen=True)
class ScalingCase:
    model: str
    ranks: int
    threads: int  # per rank
    per_rank_batch: int
    kind: str  # baseline | plain | strong | weak

    variant = Variant("cpu")

    @property
    def batch(self) -> int:
        return self.per_rank_batch * self.ranks

    @property
    def id(self) -> str:
        return render_tag(
            model=self.model,
            device="cpu",
            compile="off",
            precision="fp32",
            threads=self.threads,
            ranks=self.ranks if self.ranks > 1 else None,
            batch_size=self.batch,
        )

    def __str__(self) -> str:
        return self.id


def cases() -> list:
    out = [ScalingCase(model, *case) for model in ("simple", "deep") for case in scaling_cases(CORES)]
    return [pytest.param(c, id=c.id, marks=[pytest.mark.quick] if c.kind == "strong" else []) for c in out]


def run_job(case: ScalingCase, steps: int, out) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(case.threads)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(case.ranks),
        "--monitor-interval",
        "0.5",
        "-m",
        "mnist_models.scale.scaling",
        "--model",
        case.model,
        "--per-rank-batch",
        str(case.per_rank_batch),
        "--steps",
        str(steps),
        "--threads",
        str(case.threads),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.benchmark(timer=CLOCK, disable_gc=False)
@pytest.mark.parametrize("case", cases())
def test_ddp_step(benchmark, case, tmp_path, request):
    smoke = request.config.getoption("benchmark_disable")
    if smoke and case.kind != "strong":
        # Every case runs the same body (one torchrun job); a smoke run needs one job per net, not eight.
        pytest.skip("smoke run: the strong-scaling job of each net runs the body")
    steps = 3 if smoke else 30
    job = run_job(case, steps, tmp_path / "step.json")
    assert job["world_size"] == case.ranks and job["threads_per_rank"] == case.threads
    assert len(job["step_s"]) == steps and min(job["step_s"]) > 0
    ident = BenchIdentity(
        suite="scaling",
        variant=case.variant,
        model=case.model,
        batch=case.batch,
        threads=case.threads,
        ranks=case.ranks,
        dataset="mnist-5k",
    )
    describe(
        benchmark,
        ident,
        build_model(case.model).train_flops_per_image() * case.batch,
        case.batch,
        pinned=True,  # per rank; no case is the session's baseline
        threads_per_rank=case.threads,
        per_rank_batch=case.per_rank_batch,
        scaling=case.kind,
        allreduce_share=job["allreduce_share"],
        **{k: job[k] for k in ("compute_s", "wait_s", "comm_s", "straggler", "straggler_ratio")},
    )
    CLOCK.pending = list(job["step_s"])
    benchmark.pedantic(CLOCK.replay, rounds=len(job["step_s"]), iterations=1)
    rates(benchmark)
