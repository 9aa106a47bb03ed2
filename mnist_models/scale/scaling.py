"""What one data-parallel train step costs, timed by rank 0 inside a torchrun job.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m mnist_models.scale.scaling \
        --model simple --per-rank-batch 50 --steps 30 --out step.json

Every rank builds the net through the harness (DDP-wrapped when there is more than one rank),
warms up, then runs `--steps` synchronised train steps, and as many again under DDP's no_sync(),
which skips the gradient all-reduce. Rank 0 writes both lists of step times: the all-reduce's share
of a step is 1 - median(no_sync) / median(step). The benchmark suite (bench/test_scaling.py) runs
this for 1..cores ranks and reports throughput, scaling efficiency and that share.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

from ..core.data import load_dataset
from ..core.harness import build, real_batch, warm_up
from ..core.variants import Variant
from ..system import atomic
from ..system.machine import set_threads
from . import distributed


def measure(
    model: str, per_rank_batch: int, steps: int, rank: distributed.Rank, device: str = "cpu", threads: int | None = None
) -> dict:
    variant = Variant(device)
    threads = threads or distributed.threads_per_rank(rank)
    set_threads(threads)
    ddp = rank.world_size > 1
    if ddp:
        distributed.start(rank, "auto", device)
    wrap = (lambda m: distributed.wrap(m, device)) if ddp else None
    work = build(model, variant, "train", wrap=wrap)
    images = load_dataset("mnist-5k").train  # real digits; each rank its own slice
    x, y = real_batch(images, per_rank_batch * rank.world_size, variant)
    x, y = (
        x[rank.rank * per_rank_batch : (rank.rank + 1) * per_rank_batch],
        y[rank.rank * per_rank_batch : (rank.rank + 1) * per_rank_batch],
    )
    call = work.call_on(x, y)
    warm_up(call, calls=5)

    def timed(no_sync: bool) -> list[float]:
        times = []
        for _ in range(steps):
            with work.wrapped.no_sync() if no_sync and ddp else contextlib.nullcontext():
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
        return times

    step_s, nosync_s = timed(False), timed(True)
    if ddp:
        torch.distributed.barrier()
        distributed.stop()
    return {
        "model": model,
        "device": device,
        "world_size": rank.world_size,
        "local_world_size": rank.local_world_size,
        "threads_per_rank": threads,
        "per_rank_batch": per_rank_batch,
        "global_batch": per_rank_batch * rank.world_size,
        "step_s": step_s,
        "nosync_step_s": nosync_s,
        "allreduce_share": max(0.0, 1 - statistics.median(nosync_s) / statistics.median(step_s)) if ddp else 0.0,
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
    rank = distributed.Rank.from_env() or distributed.Rank(0, 0, 1, 1, 1)
    result = measure(args.model, args.per_rank_batch, args.steps, rank, args.device, args.threads)
    if rank.is_main:
        atomic.write_json(args.out, result | {"cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
