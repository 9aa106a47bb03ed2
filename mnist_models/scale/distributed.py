"""Starting and ending DDP jobs on torch.distributed: DistributedDataParallel under torchrun.

torchrun (or `mnist-bench train --nproc N`, which calls torchrun's own launcher in this process)
starts one process per rank; each runs the same CLI command. This module holds what happens around
a rank's work (the work itself runs in a scale/job.py Job):

- `Rank.from_env()` reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / GROUP_WORLD_SIZE
  and refuses a stray or half-set environment;
- `pg_timeout()`, `resolve_backend()`, `gpu_of()`: how a rank joins its process group;
- `launch_or_join()` / `launch()` run torchrun's launcher (single node, `--standalone`: a free port is picked)
  and turn a failed job into one line naming the rank and its reason (`first_cause`, `rank_failure`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from ..system.errors import Interrupted, MnistBenchError, UsageError
from ..system.machine import usable_cpus
from ..system.settings import seconds_from_env

# How long a rank waits in a collective for the others (the job's bound when a rank hangs). A rank
# that dies is noticed sooner: its peers' sockets close, and torchrun ends the other ranks. Only
# training runs under it: rank 0's solo work at the end (evaluation, latency, saving) starts after
# the process group is gone. $MNIST_BENCH_PG_TIMEOUT (seconds) changes it, e.g. for slow nodes.
PG_TIMEOUT_ENV = "MNIST_BENCH_PG_TIMEOUT"


def pg_timeout() -> timedelta:
    return timedelta(seconds=seconds_from_env(PG_TIMEOUT_ENV, 60.0))


class RankFailed(MnistBenchError):
    """A rank of a distributed job failed; the job ended and nothing was written."""


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    nodes: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Rank | None:
        """This process's place in a torchrun job, or None when it was not started as a rank. Read once
        and checked with the same rules as the flags: a stray or half-set torchrun environment (RANK
        without WORLD_SIZE, WORLD_SIZE=two, MASTER_PORT=notaport) is a one-line error naming the
        variable, never torch.distributed's ValueError."""
        env = os.environ
        present = [k for k in RANK_VARIABLES if k in env]
        if not present:
            return None
        missing = [k for k in RANK_VARIABLES if k not in env]
        if missing:
            raise UsageError(
                f"${', $'.join(present)} set without ${', $'.join(missing)}: this looks like a stray torchrun environment; "
                "unset it for a plain run, or start ranks with mnist-bench train --nproc N (or torchrun)"
            )
        world = _env_int("WORLD_SIZE", minimum=1)
        rank = _env_int("RANK", minimum=0)
        local_rank = _env_int("LOCAL_RANK", minimum=0)
        local_world = _env_int("LOCAL_WORLD_SIZE", minimum=1, default=world)
        if rank >= world or local_rank >= local_world or local_world > world:
            raise UsageError(
                f"$RANK={rank}, $LOCAL_RANK={local_rank}, $LOCAL_WORLD_SIZE={local_world} do not fit $WORLD_SIZE={world}"
            )
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise UsageError(f"${name} is not set: a rank needs its rendezvous address (torchrun sets it; so does --nproc)")
        _env_int("MASTER_PORT", minimum=1, maximum=65535)
        if _env_int("TORCHELASTIC_MAX_RESTARTS", minimum=0, default=0) > 0:
            raise UsageError(RESTARTS_REFUSED)
        return cls(rank, local_rank, world, local_world, _env_int("GROUP_WORLD_SIZE", minimum=1, default=world // local_world))


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def _env_int(name: str, minimum: int, maximum: int | None = None, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bound = f"an integer from {minimum} to {maximum}" if maximum is not None else f"an integer >= {minimum}"
        raise UsageError(f"${name} must be {bound}, got {raw!r}")
    return value


def resolve_backend(backend: str, device: str) -> str:
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if backend == "nccl" and device != "cuda":
        raise UsageError("the nccl backend needs CUDA GPUs; on cpu use --backend gloo (or auto)")
    return backend


def gpu_of(rank: Rank, visible: int) -> int:
    """The GPU index a rank uses: its local rank among all the node's GPUs, or the one GPU it sees when
    the launcher (SLURM, a scheduler) gave each rank its own CUDA_VISIBLE_DEVICES."""
    if visible > rank.local_rank:
        return rank.local_rank
    if visible == 1:
        return 0
    raise UsageError(f"local rank {rank.local_rank} has no GPU of its own ({visible} visible to it)")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def end_process(code: int) -> None:
    """The end of every process that runs the CLI or a rank's script (cli.run_as_process, scaling.py):
    a torchrun rank leaves without the interpreter's teardown, any other process through sys.exit."""
    if under_torchrun():
        leave(code)
    sys.exit(code)


def leave(code: int) -> None:
    """End a torchrun worker with `code`, its results written, without the interpreter's teardown.

    The process group is gone by now (finish/stop), but the DDP reducer, gloo's threads and the store
    client die in the interpreter's finalization, and that teardown once aborted a rank (SIGABRT,
    "terminate called without an active exception") after a finished job, failing it. A worker has
    nothing left to do at exit that matters: its files are written atomically before this call."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def report_failure(message: str) -> None:
    """Leave a rank's one-line reason where torchrun's launcher reads it (TORCHELASTIC_ERROR_FILE)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        rank = os.environ.get("RANK", "?")
        with open(path, "w") as fh:
            text = message if message.startswith("rank ") else f"rank {rank}: {message}"
            json.dump({"message": text, "timestamp": int(time.time())}, fh)


def launch(nproc: int, module_args: list[str]) -> None:
    """`torchrun --standalone --nproc-per-node N -m mnist_models ARGS` through torchrun's own launcher.

    A failed job raises RankFailed with one line: the first rank that failed and its reason.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise UsageError(f"--nproc must be positive, got {nproc}")
    # Each rank sets cores / local ranks itself; saying so here keeps torchrun from warning about its default of 1.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    # The agent logs every failure at length; the one line raised below says it, and each rank says its own.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--monitor-interval", "0.5", "--module", "mnist_models", *module_args]
    )
    try:
        run(args)
    except SignalException as exc:  # Ctrl-C or SIGTERM: torchrun's agent has already ended every rank
        raise Interrupted(
            f"interrupted by {exc.sigval.name}: every rank was ended; nothing of the unfinished run was written",
            int(exc.sigval),
        ) from None
    except ChildFailedError as exc:
        rank, failure = first_cause(exc.failures)
        reason = failure.message if isinstance(failure.message, str) and failure.message else _exit_reason(failure)
        if not reason.startswith("rank "):
            reason = f"rank {rank}: {reason}"
        raise RankFailed(f"the distributed job failed: {reason}") from None


# torchrun's elastic restarts re-run a whole job after a rank dies. A restarted job here starts over
# from its first step (no checkpoint is resumed), and its seeded shuffle would then differ from the
# recorded recipe's: refused up front rather than half-working.
RESTARTS_REFUSED = (
    "elastic restarts (torchrun --max-restarts) are not supported: a restarted job would start over from step 0 without "
    "its checkpoint; rerun the command instead (a finished run is kept, the unfinished one left nothing behind)"
)


# What a rank says when a collective fails because another rank died or hung: a follow-on, not a cause.
LOST_RANKS = "lost the other ranks"


def lost_ranks(exc: BaseException) -> RankFailed:
    return RankFailed(f"{LOST_RANKS} ({collective_error(exc)})")


# gloo and NCCL raise plain RuntimeErrors when a peer dies or a collective times out; these are the
# messages that say so. Any other error is the rank's own (an out-of-memory, a bug) and keeps its words.
_COLLECTIVE = re.compile(
    r"gloo|nccl|Connection closed by peer|Connection reset|Broken pipe|Timed out waiting|timed out|"
    r"ProcessGroup|process group|rendezvous|TCPStore|Socket Timeout",
    re.IGNORECASE,
)


def is_collective_failure(exc: BaseException) -> bool:
    """Did a collective fail (another rank died or hung), rather than this rank's own work?"""
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and bool(_COLLECTIVE.search(str(exc))))


def rank_failure(exc: BaseException) -> RankFailed:
    """A failure of a rank under DDP as one line: a follow-on 'lost the other ranks' when a collective
    failed, else the rank's own error, named by its type (torchrun's launcher reports that one)."""
    if is_collective_failure(exc):
        return lost_ranks(exc)
    return RankFailed(f"{type(exc).__name__}: {collective_error(exc)}")


def first_cause(failures: dict) -> tuple[int, object]:
    """The failure to report for a job: the earliest that is not a rank's follow-on 'lost the other
    ranks'. torchrun's own choice is the earliest error file, with whole-second timestamps and ties
    going to the lowest rank, so rank 0's follow-on could be named instead of the rank that died."""

    def follow_on(failure) -> bool:  # report_failure writes "rank N: lost the other ranks (...)"
        return isinstance(failure.message, str) and re.sub(r"^rank \d+: ", "", failure.message).startswith(LOST_RANKS)

    causes = {r: f for r, f in failures.items() if not follow_on(f)}
    return min((causes or failures).items(), key=lambda item: (item[1].timestamp, item[0]))


def without_nproc(argv: list[str]) -> list[str]:
    """A command line again, minus --nproc N: what each rank runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_or_join(nproc: int | None, argv: list[str]) -> tuple[bool, Rank | None]:
    """The one entry of a command that can run on N ranks (train, profile).

    With `nproc` (--nproc N), start the ranks with torchrun's launcher, each running `argv` without
    --nproc, and return (True, None) when the job has ended. Otherwise return (False, this process's
    Rank under torchrun, or None for a plain process)."""
    rank = Rank.from_env()
    if nproc is None:
        return False, rank
    if rank is not None:
        raise UsageError("--nproc starts the ranks itself; under torchrun leave it out")
    launch(nproc, without_nproc(argv))
    return True, None


def _exit_reason(failure) -> str:
    if failure.exitcode < 0:
        return f"killed by {failure.signal_name()}"
    return f"exited with status {failure.exitcode}"


def collective_error(exc: BaseException) -> str:
    """The first sentence of a backend's error, without its source location (gloo: '[.../pair.cc:545] Read error ...')."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return text.split(". ")[0][:300]
