"""One side of an A/B comparison: a process that holds one warmed-up train step and times blocks of
it on request (mnist_models.runs.ab drives two of them in alternation).

    python -m mnist_models.runs.ab_worker --model simple --spec tensor-eager-fp32-cl --threads 2

Protocol, one line each: it prints {"ready": ...} once warmed up; then for each line "N" on stdin it
times a block of N steps (core/blocks.py: one untimed step first, since the other side's block has
just evicted the caches) and prints {"trimmed_mean_s": ..., "median_s": ...}; "quit" or end of input
ends it; "profile N" answers {"ops": [...], "wall_ms": ...}, the self time of each op over N profiled steps and a step's wall time
(mnist-bench explain). It imports only what has been in the package since the layout of issue 20 (core.harness,
core.data, core.variants, system.machine), plus the allocator where the commit has one (issue 25);
the block timing itself is loaded by path from this checkout's core/blocks.py (standard library
only), so run from an older commit's worktree it times that commit's code the way this one times.

`--slowdown F` stretches every step by F of its own time with a busy-wait (a planted regression:
calibration checks that the comparison catches it, and that it measures as planted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

BLOCKS_FILE = Path(__file__).resolve().parents[1] / "core" / "blocks.py"


def load_blocks():
    """This checkout's core/blocks.py, whichever commit's package the worker imports."""
    spec = importlib.util.spec_from_file_location("mnist_bench_blocks", BLOCKS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_ops(call, steps: int) -> tuple[list[dict], float]:
    """`steps` steps under torch.profiler (after one untimed step): per op and input shapes, its self
    CPU time and calls per step; and the wall time of a step under the profiler, in ms. Only
    torch.profiler's own API, so older commits' workers answer too."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            call()
        wall_ms = (time.perf_counter() - started) / steps * 1e3
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_cpu_time_total <= 0 or e.key.startswith("ProfilerStep"):
            continue
        shapes = [list(s) for s in (e.input_shapes or []) if s][:3]
        rows.append({"name": e.key, "input_shapes": shapes, "self_us": e.self_cpu_time_total / steps, "calls": e.count / steps})
    return rows, wall_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_models.runs.ab_worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", default="eager-fp32", help="switches as a sweep spec without the loader")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slowdown", type=float, default=0.0)
    args = parser.parse_args(argv)
    # The driver owns Ctrl-C: it ends this worker (closing its stdin); a worker that traced back on the
    # terminal's SIGINT beside the driver's one-line message would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    blocks = load_blocks()

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
    try:
        for line in sys.stdin:
            if line.strip() in ("", "quit"):
                break
            if line.startswith("profile "):  # mnist-bench explain: where the step's time goes, op by op
                ops, wall_ms = profile_ops(call, int(line.split()[1]))
                print(json.dumps({"ops": ops, "wall_ms": wall_ms}), flush=True)
                continue
            times = blocks.time_steps(call, int(line), plant=args.slowdown)
            print(json.dumps(blocks.summary(times)), flush=True)
    except BrokenPipeError:  # the driver is gone (killed, or it stopped the comparison): nothing to answer
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
