"""What one data-parallel train step costs, timed by rank 0 inside a torchrun job.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m mnist_models.scale.scaling \
        --model simple --per-rank-batch 50 --steps 30 --out step.json

Every rank builds the net through the harness (DDP-wrapped when there is more than one rank),
warms up, then runs `--steps` synchronised train steps interleaved with as many under DDP's
no_sync(), which skips the gradient all-reduce (the all-reduce's share: 1 - the median paired ratio,
with its bootstrap interval). Every rank's times are gathered and rank 0 writes them all.

A synchronised step ends when the slowest rank's gradients are reduced, so its time splits into
(`breakdown`): compute (the ranks' own forward + backward + step: their no_sync medians, averaged),
waiting for the slowest rank (the slowest rank's compute beyond that average), and exposed
communication (what is left: the all-reduce not hidden behind backward). A rank whose compute is
slower beyond noise (its interquartile range above every other rank's) is named a straggler.

The benchmark suite (bench/test_scaling.py) runs this for 1..cores ranks and reports throughput,
scaling efficiency, this split and any straggler.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from ..core import blocks
from ..core.data import load_dataset
from ..core.harness import build, real_batch, warm_up
from ..core.interleave import alternate
from ..core.stats import paired_ratio
from ..core.variants import Variant
from ..system import atomic
from ..system.machine import set_threads, usable_cpus
from . import distributed
from .distributed import Rank
from .job import SOLO, Solo, open_job


def measure(
    model: str, per_rank_batch: int, steps: int, job: Solo = SOLO, device: str = "cpu", threads: int | None = None
) -> dict:
    variant = Variant(device)
    threads = threads or job.threads() or usable_cpus()
    set_threads(threads)
    work = build(model, variant, "train", wrap=job.wrapper(device))
    images = load_dataset("mnist-5k").train  # real digits; each rank its own slice
    x, y = real_batch(images, per_rank_batch * job.world_size, variant)
    mine = slice(job.index * per_rank_batch, (job.index + 1) * per_rank_batch)
    call = work.call_on(x[mine], y[mine])
    warm_up(call, calls=5)
    ddp = job.world_size > 1

    def timed(no_sync: bool) -> float:
        with work.wrapped.no_sync() if no_sync and ddp else contextlib.nullcontext():
            return blocks.time_steps(call, 1, settle=False)[0]

    # Synced and no_sync steps interleaved (the order alternating, the same on every rank), so that the
    # all-reduce's share comes from paired steps on the same machine state, with an interval.
    pairs = alternate(lambda: timed(False), lambda: timed(True), steps)
    step_s, nosync_s = [a for a, _ in pairs], [b for _, b in pairs]
    share = paired_ratio(pairs) if ddp else None  # no_sync / synced
    per_rank = job.gather({"step_s": step_s, "nosync_step_s": nosync_s})
    job.finish()
    job_steps = [max(times) for times in zip(*(r["step_s"] for r in per_rank))]  # a step ends on its slowest rank
    rank = job.rank or Rank(0, 0, 1, 1, 1)
    return {
        "model": model,
        "device": device,
        "world_size": rank.world_size,
        "local_world_size": rank.local_world_size,
        "threads_per_rank": threads,
        "per_rank_batch": per_rank_batch,
        "global_batch": per_rank_batch * rank.world_size,
        "step_s": job_steps,
        "nosync_step_s": nosync_s,
        "per_rank": per_rank,
        "allreduce_share": max(0.0, 1 - share.estimate) if share else 0.0,
        "allreduce_share_interval": [max(0.0, 1 - share.high), max(0.0, 1 - share.low)] if share else None,
        **breakdown(job_steps, [r["nosync_step_s"] for r in per_rank]),
    }


# The global batch of the scaling suite: the seed's.
GLOBAL_BATCH = 100


def scaling_cases(cores: int) -> list[tuple[int, int, int, str]]:
    """(ranks, threads per rank, per-rank batch, kind) of the scaling suite on a machine with `cores`:

    - baseline: 1 rank x t threads, for every t a multi-rank case uses: efficiencies compare N ranks
      x t threads with 1 rank x t threads (the same work per rank), so they hold on any core count;
    - plain: 1 rank x all the cores, the one process the ranks compete with;
    - strong: N ranks x cores/N threads sharing the global batch, only where N divides it (8 ranks of
      12 would time 96 images against 100);
    - weak: N ranks x cores/N threads, the global batch on every rank.
    """
    ranks = [n for n in (2, 4, 8) if n <= cores]
    threads = sorted({cores // n for n in ranks} | {1}, reverse=True)
    out = [(1, t, GLOBAL_BATCH, "baseline") for t in threads]
    if cores not in threads:
        out.append((1, cores, GLOBAL_BATCH, "plain"))
    for n in ranks:
        if GLOBAL_BATCH % n == 0:
            out.append((n, cores // n, GLOBAL_BATCH // n, "strong"))
        out.append((n, cores // n, GLOBAL_BATCH, "weak"))
    return out


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def breakdown(job_steps: list[float], compute_per_rank: list[list[float]]) -> dict:
    """A synchronised step split into compute, waiting for the slowest rank and exposed communication
    (seconds, medians), and the straggler: the rank whose compute is slower beyond noise, or None."""
    step = statistics.median(job_steps)
    own = [statistics.median(times) for times in compute_per_rank]
    mean, slowest = statistics.fmean(own), max(own)
    worst = own.index(slowest)
    others = [c for r, c in enumerate(own) if r != worst]
    straggler = None
    if others:
        q1 = _quartiles(compute_per_rank[worst])[0]
        if all(q1 > _quartiles(times)[1] for r, times in enumerate(compute_per_rank) if r != worst):
            straggler = worst
    return {
        "step_median_s": step,
        "compute_s": mean,  # the ranks' own work, on average
        "wait_s": slowest - mean,  # the average rank's wait for the slowest at the all-reduce
        "comm_s": max(0.0, step - slowest),  # what the all-reduce adds beyond the slowest rank's compute
        "straggler": straggler,
        "straggler_ratio": slowest / statistics.median(others) if straggler is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_models.scale.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("simple", "deep"), required=True, help="which net")
    parser.add_argument("--per-rank-batch", type=int, required=True, help="batch on each rank")
    parser.add_argument("--steps", type=int, default=30, help="timed steps, with and without the all-reduce (default: 30)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores / local ranks)")
    parser.add_argument("--out", required=True, help="JSON file rank 0 writes")
    args = parser.parse_args(argv)
    with open_job(Rank.from_env(), "auto", args.device) as job:
        result = measure(args.model, args.per_rank_batch, args.steps, job, args.device, args.threads)
    if job.is_main:
        atomic.write_json(args.out, result | {"cores": usable_cpus()})
    return 0


if __name__ == "__main__":
    distributed.end_process(main())  # without the interpreter's teardown of gloo (see leave)
