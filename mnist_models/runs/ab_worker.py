"""One side of an A/B comparison: a process that holds one warmed-up train step and times blocks of
it on request (mnist_models.runs.ab drives two of them in alternation).

    python -m mnist_models.runs.ab_worker --model simple --spec tensor-eager-fp32-cl --threads 2

Protocol, one line each: it prints {"ready": ...} once warmed up; then for each line "N" on stdin it
runs one untimed step (the other side's block has just evicted its caches), times N steps and
prints {"trimmed_mean_s": ..., "median_s": ...} of the N steps; "quit" or end of input ends it.
It imports only what has been in the package since the layout of issue 20 (core.harness,
core.data, core.variants, system.machine), plus the allocator where the commit has one (issue 25),
so run from an older commit's worktree it times that commit's code.

`--slowdown F` stretches every step by F of its own time (a planted regression: calibration checks
that the comparison catches it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

TRIM = 0.2  # share of steps dropped at each end of a block


def trimmed_mean(times: list[float]) -> float:
    """The mean of a block's middle steps: a cost paid every other step stays in (half the steps), a
    rare hiccup of the machine falls out. Here, not in core/stats.py: this file runs against older
    commits' packages too."""
    ordered = sorted(times)
    cut = int(len(ordered) * TRIM)
    return statistics.fmean(ordered[cut : len(ordered) - cut] or ordered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_models.runs.ab_worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", default="eager-fp32", help="switches as a sweep spec without the loader")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slowdown", type=float, default=0.0)
    args = parser.parse_args(argv)

    import torch

    from mnist_models.core.data import load_dataset
    from mnist_models.core.harness import build, real_batch, warm_up
    from mnist_models.core.variants import Variant, parse_tag

    try:  # since issue 25; an older commit's worker runs with the allocator that commit had
        from mnist_models.system.allocator import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    if args.threads:
        from mnist_models.system.machine import set_threads

        set_threads(args.threads)
    fields = parse_tag(args.spec)
    variant = Variant(
        "cpu",
        fields.get("compile", "off"),
        fields.get("precision", "fp32"),
        bool(fields.get("channels_last")),
        bool(fields.get("fast")),
    )
    work = build(args.model, variant, "train")
    x, y = real_batch(load_dataset("mnist-5k").train, args.batch, variant)
    call = work.call_on(x, y)
    warm_up(call, calls=5)
    print(json.dumps({"ready": True, "pid": os.getpid(), "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() in ("", "quit"):
            break
        call()  # untimed: caches and threads come back from the other side's block
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if args.slowdown:
                time.sleep(args.slowdown * elapsed)
                elapsed = time.perf_counter() - start
            times.append(elapsed)
        print(json.dumps({"trimmed_mean_s": trimmed_mean(times), "median_s": statistics.median(times)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
