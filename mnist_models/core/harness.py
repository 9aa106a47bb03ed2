"""One harness for every mode: training, profiling and the benchmark suites set up and time alike.

seed -> model + optimizer + step for a variant -> a device batch of real digits -> warm-up ->
the synchronised call. A number from one mode therefore describes the code the others run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .data import Split
from .nets import build_model, make_fast
from .seed_recipe import SEED
from .variants import MODES, Variant


def seed_everything(seed: int, device: str) -> None:
    """The seed's seeding: torch.manual_seed, and every GPU's generator on CUDA."""
    torch.manual_seed(seed)
    if device == "cuda":
        torch.cuda.manual_seed_all(seed)


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, variant: Variant
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """forward + loss + backward + optimizer step; returns the detached loss (no host sync)."""
    run = variant.compiled(model)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if variant.precision == "fp16" else None

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with variant.autocast():
            loss = loss_fn(run(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step


def make_forward(model: nn.Module, variant: Variant) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inference: eval mode, inference_mode, autocast as the variant says."""
    model.eval()
    run = variant.compiled(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), variant.autocast():
            return run(x)

    return forward


@dataclass
class Workload:
    """A seeded net on its device, with the step that a mode runs: `step(x, y)` trains, `forward(x)` infers."""

    model: nn.Module
    variant: Variant
    mode: str
    optimizer: torch.optim.Optimizer | None = None
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    wrapped: nn.Module | None = None  # the wrapper the step runs (DistributedDataParallel), if any

    def call_on(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The callable that timing and profiling run: one step (or forward) on a fixed batch, then a sync."""
        work = (lambda: self.step(x, y)) if self.mode == "train" else (lambda: self.forward(x))

        def call() -> torch.Tensor:
            out = work()
            self.variant.synchronize()
            return out

        return call


DETERMINISTIC_ENV = "MNIST_BENCH_DETERMINISTIC"


def deterministic_requested() -> bool:
    raw = os.environ.get(DETERMINISTIC_ENV, "0")
    if raw not in ("0", "1"):
        from ..system.errors import UsageError

        raise UsageError(f"${DETERMINISTIC_ENV} is 0 or 1, got {raw!r}")
    return raw == "1"


def configure_backends(variant: Variant) -> None:
    """The one place every mode (training, profiling, benchmarks, tune) sets what decides the kernels.

    On CUDA: cuDNN autotuning on, so that training, profiles and benchmarks run the same kernels (the
    kernel report names what the benchmarks timed); with $MNIST_BENCH_DETERMINISTIC=1 deterministic
    algorithms instead (bit-identical repeats, slower), as the CUDA determinism test asks. The flags
    land in every record through machine_info()["numerics"]. A compiled variant starts from a fresh
    dynamo: a new net must not reuse the graphs of the previous case, nor hit the recompile limit
    and silently run eager under a compile label, and its compile time must not depend on order."""
    if variant.device == "cuda":
        deterministic = deterministic_requested()
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            torch.use_deterministic_algorithms(True)
    if variant.compile != "off":
        from torch import _dynamo

        _dynamo.reset()


def build(
    model_name: str,
    variant: Variant,
    mode: str = "train",
    seed: int = SEED,
    lr: float = 1e-3,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> Workload:
    """Seed, build the net in the variant's device and layout, and its Adam + train step (or forward).

    `wrap` (e.g. DistributedDataParallel) wraps the placed net for the train step; `Workload.model`
    stays the plain net, for evaluation and its state_dict.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    configure_backends(variant)
    seed_everything(seed, variant.device)
    model = build_model(model_name)
    if variant.fast:
        make_fast(model)
    model = variant.place(model)
    if mode == "forward":
        return Workload(model, variant, mode, forward=make_forward(model, variant))
    model.train()
    # fast: one fused kernel updates every parameter (the default loops over them one by one on a CPU).
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if variant.fast else {}))
    runner = wrap(model) if wrap is not None else model
    step = make_train_step(runner, optimizer, variant)
    return Workload(model, variant, mode, optimizer, step=step, wrapped=runner if wrap is not None else None)


def real_batch(split: Split, batch: int, variant: Variant) -> tuple[torch.Tensor, torch.Tensor]:
    """A device-resident batch of real digits in the variant's memory format, scaled as in training.

    Indices wrap around the split, so a batch may be larger than it (batch 1000 from 500 images).
    """
    idx = torch.arange(batch) % len(split)
    x = split.images[idx].unsqueeze(1).float().div(255)
    return variant.to_input(x), split.labels[idx].to(variant.device)


def warm_up(call: Callable[[], object], calls: int = 3) -> float:
    """Run `call` until compile, autotuning and first allocations are done; returns the first call's seconds."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(calls - 1):
        call()
    return first
