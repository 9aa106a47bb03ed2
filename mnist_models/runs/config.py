"""TrainConfig: the recipe and variant of one training run, validated once, when it is made.

A run's identity is its whole recipe (`RunKey`): two configs that train differently never share a
name, so a finished record is never mistaken for, or replaced by, a run of another recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..core.data import DATASETS, LOADERS
from ..core.nets import MODELS
from ..core.variants import COMPILE_MODES, DEVICES, PRECISIONS, Variant, parse_tag, render_tag, resolve_device
from ..system.errors import UsageError

# The seed's recipe: what a run name leaves out when a run follows it.
SEED_EPOCHS, SEED_BATCH_SIZE, SEED_LR, SEED = 15, 100, 1e-3, 777
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
# More torch threads than this many per logical CPU only oversubscribes the cores (a 2-core machine
# given 10,000 threads reached a load average of 785).
MAX_THREADS_PER_CPU = 2
BACKENDS = ("auto", "gloo", "nccl")


def check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def check_variant_names(device: str, compile: str, precision: str) -> None:
    """The variant's names, checked when a config is made; the device resolves (and may fail) later."""
    check_choice("device", device, DEVICES)
    check_choice("compile mode", compile, COMPILE_MODES)
    check_choice("precision", precision, PRECISIONS)


def check_threads(threads: int | None) -> None:
    if threads is None:
        return
    cpus = os.cpu_count() or 1
    if threads < 1:
        raise UsageError(f"threads must be positive, got {threads}")
    if threads > MAX_THREADS_PER_CPU * cpus:
        raise UsageError(
            f"{threads} threads is far above the {cpus} logical CPUs here (at most {MAX_THREADS_PER_CPU * cpus}): "
            "torch would oversubscribe the cores and every timing would be meaningless"
        )


@dataclass(frozen=True)
class RunKey:
    """Everything that decides what a run trains and how fast: its identity on disk."""

    dataset: str
    model: str
    loader: str
    device: str
    compile: str
    precision: str
    channels_last: bool
    fast: bool
    threads: int  # the torch threads the run uses (per rank; a config that leaves them to torch is resolved)
    ranks: int  # data-parallel processes (DDP); 1 for a plain run
    epochs: int
    batch_size: int
    lr: float
    seed: int

    @property
    def name(self) -> str:
        """e.g. simple-tensor-cpu-eager-bf16-cl-t1-s777; epochs, batch and lr are named when they are not the seed's."""
        return render_tag(
            model=self.model,
            loader=self.loader,
            device=self.device,
            compile=self.compile,
            precision=self.precision,
            channels_last=self.channels_last,
            fast=self.fast,
            threads=self.threads,
            ranks=None if self.ranks == 1 else self.ranks,
            epochs=None if self.epochs == SEED_EPOCHS else self.epochs,
            batch_size=None if self.batch_size == SEED_BATCH_SIZE else self.batch_size,
            lr=None if self.lr == SEED_LR else self.lr,
            seed=self.seed,
        )

    @classmethod
    def from_name(cls, dataset: str, name: str) -> RunKey:
        """The inverse of `name` (fields a name leaves out take the seed's values)."""
        parsed = parse_tag(name)
        missing = {"model", "loader", "device", "threads", "seed"} - set(parsed)
        if missing:
            raise UsageError(f"run name {name!r} does not name the {', '.join(sorted(missing))}")
        defaults = dict(compile="off", precision="fp32", channels_last=False, fast=False, ranks=1, epochs=SEED_EPOCHS,
                        batch_size=SEED_BATCH_SIZE, lr=SEED_LR)  # fmt: skip
        return cls(dataset=dataset, **(defaults | parsed))


@dataclass(frozen=True)
class TrainConfig:
    model: str = "simple"
    dataset: str = "mnist"
    data_root: str = "data"
    epochs: int = SEED_EPOCHS
    batch_size: int = SEED_BATCH_SIZE
    lr: float = SEED_LR
    seed: int = SEED
    device: str = "auto"
    loader: str = "seed"  # the seed's DataLoader; "tensor" batches from device memory
    compile: str = "off"
    precision: str = "fp32"
    channels_last: bool = False
    fast: bool = False  # nets.make_fast + fused Adam (variants.py)
    eval_batch_size: int = 1000
    eval_every_epoch: bool = True  # test accuracy after each epoch, for accuracy-per-epoch curves
    threads: int | None = None  # torch intra-op threads (per rank); None: torch's default, or cores / local ranks under DDP
    measure_latency: bool = True  # forward latency at batch 1 and 1000 after training
    ranks: int = 1  # DDP world size; batch_size is the global batch, split evenly among the ranks
    backend: str = "auto"  # torch.distributed backend under DDP: gloo on cpu, nccl on cuda

    @property
    def per_rank_batch(self) -> int:
        return self.batch_size // self.ranks

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("loader", self.loader, LOADERS)
        check_variant_names(self.device, self.compile, self.precision)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be a positive whole number, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed!r}")
        check_threads(self.threads)
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 1:
            raise UsageError(f"ranks must be a positive whole number, got {self.ranks!r}")
        if self.batch_size % self.ranks:
            raise UsageError(
                f"the global batch of {self.batch_size} does not divide among {self.ranks} ranks; pick a batch size that does, "
                "or --per-rank-batch for weak scaling"
            )
        check_choice("backend", self.backend, BACKENDS)

    def variant(self) -> Variant:
        return Variant(resolve_device(self.device), self.compile, self.precision, self.channels_last, self.fast)

    def key(self, device: str | None = None, threads: int | None = None) -> RunKey:
        """The run's identity. `device` and `threads` are the resolved ones; by default 'auto' and a
        thread count left to torch resolve on this machine, in this process, as training would."""
        variant = Variant(device or resolve_device(self.device), self.compile, self.precision, self.channels_last, self.fast)
        return RunKey(
            dataset=self.dataset,
            model=self.model,
            loader=self.loader,
            device=variant.device,
            compile=variant.compile,
            precision=variant.precision,
            channels_last=variant.channels_last,
            fast=variant.fast,
            threads=threads or self.threads or torch.get_num_threads(),
            ranks=self.ranks,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=float(self.lr),
            seed=self.seed,
        )

    def run_name(self) -> str:
        return self.key().name
