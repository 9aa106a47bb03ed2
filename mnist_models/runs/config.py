"""TrainConfig: the recipe and variant of one training run, validated once, when it is made.

A run's identity is its whole recipe (`RunKey`): two configs that train differently never share a
name, so a finished record is never mistaken for, or replaced by, a run of another recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

import torch

from ..core.data import DATASETS, LOADERS
from ..core.nets import MODELS
from ..core.recipes import SEED_SCHEDULE, Recipe
from ..core.seed_recipe import SEED, SEED_BATCH_SIZE, SEED_EPOCHS, SEED_LR
from ..core.targets import target_for
from ..core.variants import SCHEDULES, Variant, render_tag
from ..system.errors import UsageError
from ..system.machine import usable_cpus

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
# More torch threads than this many per logical CPU only oversubscribes the cores (a 2-core machine
# given 10,000 threads reached a load average of 785).
MAX_THREADS_PER_CPU = 2
BACKENDS = ("auto", "gloo", "nccl")
# A variant spec (`train --variant`, `sweep --variants`, tune's stored choice) names these axes, e.g.
# "seed-eager-fp32", "tensor-eager-bf16-cl"; the device, threads and recipe come from their own flags.
SPEC_FIELDS = ("loader", *Variant.SWITCHES)


def variant_spec(loader: str, variant: Variant) -> str:
    """The sweep spec of a loader and variant, without the device: 'seed-eager-fp32' is the seed's pipeline."""
    switches = variant.fields()
    return render_tag(**{name: loader if name == "loader" else switches[name] for name in SPEC_FIELDS})


def check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def check_threads(threads: int | None) -> None:
    if threads is None:
        return
    cpus = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be positive, got {threads}")
    if threads > MAX_THREADS_PER_CPU * cpus:
        raise UsageError(
            f"{threads} threads is far above the {cpus} logical CPUs here (at most {MAX_THREADS_PER_CPU * cpus}): "
            "torch would oversubscribe the cores and every timing would be meaningless"
        )


def check_thread_env(env: dict | None = None) -> None:
    """$OMP_NUM_THREADS (torch reads it at import) checked with the same rules as --threads: OMP_NUM_THREADS=0
    or =two ran silently with torch's own choice, and =6 on 2 CPUs trained where --threads 6 is refused."""
    raw = (os.environ if env is None else env).get("OMP_NUM_THREADS")
    if raw is None or raw == "":
        return
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise UsageError(f"$OMP_NUM_THREADS must be a positive integer, got {raw!r} (unset it for torch's own choice)")
    try:
        check_threads(threads)
    except UsageError as exc:
        raise UsageError(f"$OMP_NUM_THREADS={raw}: {exc}") from None


def is_seed_way(loader: str, variant: Variant, ranks: int, recipe: Recipe, any_epochs: bool = False) -> bool:
    """The one test of "the seed's way" every report uses: the seed's pipeline (its DataLoader; eager,
    fp32, contiguous, the seed's layer order; one process) with the seed's recipe (Recipe.is_seed).
    any_epochs: its batch, rate and schedule at any epoch budget (the accuracy report's seed rows)."""
    if any_epochs:
        recipe = replace(recipe, epochs=SEED_EPOCHS)
    return loader == "seed" and variant.is_plain and ranks == 1 and recipe.is_seed


class _RecipeAndSpec:
    """What a config and its run key both answer from the fields they share."""

    def is_seed_way(self, any_epochs: bool = False) -> bool:
        return is_seed_way(self.loader, self.variant, self.ranks, self.recipe, any_epochs)

    @property
    def recipe(self) -> Recipe:
        return Recipe(self.epochs, self.batch_size, self.lr, self.schedule)

    @property
    def spec(self) -> str:
        """The loader and variant as a sweep spec, without the device ('seed-eager-fp32': the seed's pipeline)."""
        return variant_spec(self.loader, self.variant)


@dataclass(frozen=True)
class RunKey(_RecipeAndSpec):
    """Everything that decides what a run trains and how fast: its identity on disk.

    Made once, when a run starts (`TrainConfig.resolve`): the device is resolved and the threads are
    the ones the run will use; names, claims, skips and saves all come from it, and records store it.
    """

    dataset: str
    model: str
    loader: str
    variant: Variant  # resolved: cpu or cuda
    threads: int  # the torch threads the run uses (per rank)
    ranks: int  # data-parallel processes (DDP); 1 for a plain run
    epochs: int
    batch_size: int
    lr: float
    seed: int
    schedule: str = SEED_SCHEDULE  # the learning rate's schedule (core/recipes.py)
    target: float | None = None  # stop at the first evaluation that reaches this test accuracy (time to accuracy)

    def __post_init__(self) -> None:
        if not self.variant.is_resolved:
            raise UsageError("a run key needs a resolved device (cpu or cuda)")

    @property
    def name(self) -> str:
        """e.g. simple-tensor-cpu-eager-bf16-cl-t1-s777; epochs, batch and lr are named when they are not the seed's."""
        return render_tag(
            model=self.model,
            loader=self.loader,
            **self.variant.fields(),
            threads=self.threads,
            ranks=None if self.ranks == 1 else self.ranks,
            epochs=None if self.epochs == SEED_EPOCHS else self.epochs,
            batch_size=None if self.batch_size == SEED_BATCH_SIZE else self.batch_size,
            lr=None if self.lr == SEED_LR else self.lr,
            schedule=None if self.schedule == SEED_SCHEDULE else self.schedule,
            target=self.target,
            seed=self.seed,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> RunKey:
        if not isinstance(data, dict):
            raise ValueError("key must be an object")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"key fields differ from {', '.join(sorted(names))}")
        return cls(**(data | {"variant": Variant.from_json(data["variant"]), "lr": float(data["lr"])}))


@dataclass(frozen=True)
class TrainConfig(_RecipeAndSpec):
    model: str = "simple"
    dataset: str = "mnist"
    data_root: str = "data"
    epochs: int = SEED_EPOCHS
    batch_size: int = SEED_BATCH_SIZE
    lr: float = SEED_LR
    seed: int = SEED
    variant: Variant = Variant("auto")  # device 'auto' resolves when the run starts (resolve)
    loader: str = "seed"  # the seed's DataLoader; "tensor" batches from device memory
    eval_batch_size: int = 100  # runs.train.EVAL_BATCH: small batches stay in cache
    eval_every_epoch: bool = True  # test accuracy after each epoch, for accuracy-per-epoch curves
    threads: int | None = None  # torch intra-op threads (per rank); None: torch's default, or CPUs / local ranks under DDP
    measure_latency: bool = True  # forward latency at batch 1 and 1000 after training
    ranks: int = 1  # DDP world size; batch_size is the global batch, split evenly among the ranks
    backend: str = "auto"  # torch.distributed backend under DDP: gloo on cpu, nccl on cuda
    schedule: str = SEED_SCHEDULE  # how the rate moves per step (core/recipes.py); the seed's is constant
    target: float | None = None  # time to accuracy: stop at the first evaluation that reaches it

    @property
    def per_rank_batch(self) -> int:
        return self.batch_size // self.ranks

    def to_target(self) -> TrainConfig:
        """This config run to its net's time-to-accuracy target on its dataset (core/targets.py)."""
        return replace(self, target=target_for(self.dataset, self.model).accuracy)

    def with_recipe(self, recipe: Recipe) -> TrainConfig:
        return replace(self, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("loader", self.loader, LOADERS)
        if not isinstance(self.variant, Variant):
            raise UsageError(f"a config's variant is a Variant, got {type(self.variant).__name__}")
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
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.target is not None:
            if isinstance(self.target, bool) or not isinstance(self.target, float) or not 0 < self.target <= 1:
                raise UsageError(f"a target accuracy is a fraction in (0, 1], got {self.target!r}")
            if not self.eval_every_epoch:
                raise UsageError("a run to a target accuracy evaluates after every epoch")

    def resolve(self, default_threads: int | None = None, device: str | None = None) -> RunKey:
        """The run's identity, resolved once when it starts: the device on this machine (or `device`,
        chosen by whoever places the run: a Ray driver resolves for the cluster, not for itself), and
        the threads the run will use: the config's own, else `default_threads` (what the launcher
        gives each rank or Ray task), else torch's default in this process."""
        variant = replace(self.variant, device=device) if device else self.variant.resolved()
        return RunKey(
            dataset=self.dataset,
            model=self.model,
            loader=self.loader,
            variant=variant,
            threads=self.threads or default_threads or torch.get_num_threads(),
            ranks=self.ranks,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=float(self.lr),
            seed=self.seed,
            schedule=self.schedule,
            target=self.target,
        )

    def with_choice(self, choice: dict) -> TrainConfig:
        """This config with a variant spec's choice applied: loader, threads and any variant field."""
        variant_fields = {k: v for k, v in choice.items() if k in Variant.VARIANT_FIELDS}
        rest = {k: v for k, v in choice.items() if k not in Variant.VARIANT_FIELDS}
        return replace(self, variant=replace(self.variant, **variant_fields), **rest)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        return cls(**(data | {"variant": Variant.from_json(data["variant"])}))
