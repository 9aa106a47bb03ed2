"""The job a process belongs to: one process alone (`Solo`), or one rank of a DDP job (`Job`).

`open_job()` is the one place a process group starts, checks that its ranks run the same code,
finishes and stops, and where a failure of a rank (its own error, or a collective that failed
because another rank died or hung) becomes one line, RankFailed. Training, profiling and the scaling
suite ask their job for what depends on it (the mean loss, rank 0's accuracy, the data shard, the
DDP wrapper); a `Solo` job answers with what it was given, so that code reads the same at world size
1 and N, with no branch on the rank except where rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..core.data import Split, make_loader
from ..system.errors import MnistBenchError, UsageError
from ..system.machine import code_fingerprint, git_commit, usable_cpus
from .distributed import Rank, gpu_of, pg_timeout, rank_failure, resolve_backend

_NEEDS = {"code": "the same checkout (commit and edits)", "data": "the same dataset files"}


class Solo:
    """A process on its own: every collective is the identity, and it is its own rank 0."""

    rank: Rank | None = None
    index = 0
    world_size = 1
    is_main = True

    def threads(self) -> int | None:
        """The threads a process uses when its config names none: torch's own choice (None)."""
        return None

    def agree(self, what: str, value: object) -> None:
        pass

    def decide(self, problem: MnistBenchError | None) -> None:
        """Raise rank 0's verdict (a run already stored, say) on every rank; alone, just raise it."""
        if problem is not None:
            raise problem

    def mean(self, value: float) -> float:
        return value

    def gather(self, value: object) -> list:
        return [value]

    def from_main(self, value: object) -> object:
        return value

    def barrier(self) -> None:
        pass

    def siblings_cpu_seconds(self, own_seconds: float) -> float:
        """CPU seconds the other ranks on this machine used (they belong to the job, not a neighbour)."""
        return 0.0

    def seed_own_randomness(self, seed: int) -> None:
        """Alone, the seed's one seed drives everything (the net's init, the shuffle, dropout)."""

    def wrapper(self, device: str) -> Callable[[nn.Module], nn.Module] | None:
        """What wraps the placed net for the train step (None: the net itself)."""
        return None

    def loader(self, kind: str, split: Split, batch_size: int, device: str, seed: int):
        """This process's batches: alone, all of them, shuffled by the global RNG as the seed did."""
        return make_loader(kind, split, batch_size, device)

    def describe(self, per_rank_batch: int, threads: int) -> dict | None:
        """What a record says of the job that made it (nothing, alone)."""
        return None

    def finish(self) -> None:
        """The end of the job's collectives; what rank 0 does afterwards, it does alone."""


SOLO = Solo()


class Job(Solo):
    """One rank of a DDP job whose process group is up (see open_job)."""

    def __init__(self, rank: Rank, backend: str) -> None:
        self.rank = rank
        self.index = rank.rank
        self.world_size = rank.world_size
        self.is_main = rank.is_main
        self.backend = backend

    def threads(self) -> int:
        """This rank's share of the CPUs the process may use (torchrun's OMP_NUM_THREADS=1 is replaced)."""
        return threads_per_rank(self.rank)

    def agree(self, what: str, value: object) -> None:
        """Every rank must have been started with the same `value` (the config, the code, the data);
        else every rank raises the same one-line UsageError naming the first rank that differs and how."""
        values = self.gather(value)
        differing = [r for r, v in enumerate(values) if v != values[0]]
        if not differing:
            return
        other_rank = differing[0]
        first, other = values[0], values[other_rank]
        diff = ""
        if isinstance(first, dict) and isinstance(other, dict):
            key = next((k for k in first if first.get(k) != other.get(k)), None)
            diff = f" ({key}: {first.get(key)!r} on rank 0, {other.get(key)!r} on rank {other_rank})" if key else ""
        need = _NEEDS.get(what, "the same flags")
        raise UsageError(f"rank {other_rank} was started with another {what} than rank 0{diff}; every rank needs {need}")

    def decide(self, problem: MnistBenchError | None) -> None:
        """Rank 0's verdict for everyone, so that no rank trains alone and waits for the others."""
        box = [None if problem is None else (type(problem), str(problem))]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        kind, message = box[0]
        raise kind(message) if self.is_main else kind(f"rank 0 stopped the job: {message}")

    def mean(self, value: float) -> float:
        """The mean over all ranks (an epoch's loss: each rank saw its own shard). Every rank gets the
        same value, so the decisions made from it (divergence) are the same on every rank."""
        t = torch.tensor([value], dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t) / self.world_size

    def gather(self, value: object) -> list:
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: object) -> object:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def siblings_cpu_seconds(self, own_seconds: float) -> float:
        me = (socket.gethostname(), self.index)
        values = self.gather((me, own_seconds))
        return sum(seconds for (host, rank), seconds in values if host == me[0] and rank != me[1])

    def seed_own_randomness(self, seed: int) -> None:
        # The same initial weights everywhere (and DDP broadcasts rank 0's); each rank its own dropout.
        torch.manual_seed(seed + self.index)

    def wrapper(self, device: str) -> Callable[[nn.Module], nn.Module]:
        return lambda model: ddp_wrap(model, device)

    def loader(self, kind: str, split: Split, batch_size: int, device: str, seed: int):
        """This rank's shard of every epoch, from a generator seeded alike on every rank."""
        return make_loader(kind, split, batch_size, device, rank=self.index, world=self.world_size, shuffle_seed=seed)

    def describe(self, per_rank_batch: int, threads: int) -> dict:
        cores = usable_cpus()
        rank = self.rank
        return {
            "world_size": rank.world_size,
            "local_world_size": rank.local_world_size,
            "nodes": rank.nodes,
            "backend": self.backend,
            "per_rank_batch": per_rank_batch,
            "threads_per_rank": threads,
            "oversubscribed": rank.local_world_size * threads > cores,  # more busy threads than cores on a node
        }

    def finish(self) -> None:
        """All ranks wait here, then leave the process group. No rank tears it down while another still
        uses the rendezvous store (seen: a SIGABRT in a store read), and what rank 0 does alone
        afterwards runs under no collective timeout."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def threads_per_rank(rank: Rank) -> int:
    """The CPUs this process may use (affinity mask, cgroup quota) shared among the node's ranks."""
    return max(1, usable_cpus() // rank.local_world_size)


def ddp_wrap(model: nn.Module, device: str) -> nn.Module:
    """DistributedDataParallel around a placed net: rank 0's weights are broadcast, gradients averaged."""
    from torch.nn.parallel import DistributedDataParallel

    if device == "cuda":
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)


@contextlib.contextmanager
def open_job(rank: Rank | None, backend: str = "auto", device: str = "cpu") -> Iterator[Solo]:
    """The job of this process for the body of the block: SOLO for a plain process (nothing changes),
    else a Job whose process group is started (gloo on CPU, nccl on CUDA with one GPU per local rank,
    under PG_TIMEOUT) and whose ranks agree on the code they run. On the way out the group is stopped;
    a RuntimeError or OSError inside becomes RankFailed, one line (torchrun's launcher reports it)."""
    if rank is None:
        yield SOLO
        return
    try:
        backend = resolve_backend(backend, device)
        if device == "cuda":
            torch.cuda.set_device(gpu_of(rank, torch.cuda.device_count()))
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=pg_timeout())
        job = Job(rank, dist.get_backend())
        # The same flags are not the same job: a rank on another checkout (another shuffle, another net).
        job.agree("code", {"commit": git_commit(), "source": code_fingerprint()})
        yield job
    except (RuntimeError, OSError) as exc:
        raise rank_failure(exc) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
