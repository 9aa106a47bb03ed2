"""TrainConfig, the one training loop both nets share, and evaluate().

The loop reproduces the seed's recipe (Adam 1e-3, batch 100, seed 777, shuffle + drop_last,
mean batch loss printed per epoch) and fixes its evaluation: the test set is fed in batches,
scaled to [0, 1] as in training. The seed's own figure (raw 0..255 pixels) is computed too, as
`seed_style_accuracy`, so its table can be reproduced and explained.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .data import DATASETS, LOADERS, Dataset, Split, check_batch_size, load_dataset, make_loader
from .errors import CheckpointError, TrainingDiverged, UsageError
from .machine import CpuContention, busy_check, machine_info, peak_memory_mb, reset_peak_memory
from .nets import MODELS, build_model
from .variants import Variant, device_name, make_forward, make_train_step, resolve_device

SEED_EPOCH_LINE = "[Epoch: {:>4}] cost = {:>.9}"  # the seed's print format, byte for byte


@dataclass(frozen=True)
class TrainConfig:
    model: str = "simple"
    dataset: str = "mnist"
    data_root: str = "data"
    epochs: int = 15
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 777
    device: str = "auto"
    loader: str = "seed"  # the seed's DataLoader; "tensor" batches from device memory
    compile: str = "off"
    precision: str = "fp32"
    channels_last: bool = False
    eval_batch_size: int = 1000
    eval_every_epoch: bool = True  # test accuracy after each epoch, for accuracy-per-epoch curves
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    measure_latency: bool = True  # forward latency at batch 1 and 1000 after training

    def validate(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if self.loader not in LOADERS:
            raise UsageError(f"unknown loader {self.loader!r}; choose one of: {', '.join(LOADERS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be positive, got {self.threads}")

    def variant(self) -> Variant:
        return Variant(resolve_device(self.device), self.compile, self.precision, self.channels_last)

    def run_name(self) -> str:
        """e.g. simple-tensor-cpu-eager-bf16-cl-s777: the model, the loader, the variant and the seed."""
        return f"{self.model}-{self.loader}-{self.variant().tag}-s{self.seed}"


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: str, batch_size: int = 1000, scale: bool = True) -> float:
    """Test accuracy, in batches, in eval mode.

    scale=True feeds pixels / 255 as in training; scale=False feeds raw 0..255 floats, which is
    what the seed's script did (its printed accuracies come from this).
    """
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(split), batch_size):
            x = split.images[start : start + batch_size].to(device).unsqueeze(1).float()
            if scale:
                x = x.div_(255)
            y = split.labels[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return correct / len(split)


@dataclass
class EpochResult:
    mean_loss: float
    seconds: float
    steps: int
    first_loss: float  # the first batch's loss: a benchmark checks the epoch learned
    images: int


def train_epoch(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches,
    variant: Variant,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> EpochResult:
    """One pass over `batches`; losses are summed on the device and read once at the end.

    Summing detached losses (not `avg_cost += cost / total_batch`) keeps no autograd history,
    and one `.item()` per epoch keeps the host from waiting on the device every step.
    """
    start = time.perf_counter()
    total = first = None
    steps = images = 0
    for x, y in batches:
        loss = step(variant.to_input(x), y.to(variant.device, non_blocking=True))
        total = loss.float() if total is None else total + loss.float()
        if first is None:
            first = loss.float()
        steps += 1
        images += len(y)
        if on_step is not None:
            on_step(steps, total)
    variant.synchronize()
    seconds = time.perf_counter() - start
    if steps == 0:
        raise UsageError("the loader yielded no batch (batch size larger than the dataset?)")
    return EpochResult(float(total) / steps, seconds, steps, float(first), images)


def inference_latency_ms(model: nn.Module, variant: Variant, batch_sizes=(1, 1000), repeats: int = 10) -> dict[str, float]:
    """Median forward latency per batch size, warmed up, synchronised; for the accuracy-vs-cost table.

    A rough figure taken at the end of a run; the forward benchmark suite is the careful one.
    """
    forward = make_forward(model, variant)
    latency = {}
    for batch in batch_sizes:
        x = variant.to_input(torch.rand(batch, 1, 28, 28))
        for _ in range(3):
            forward(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(x)
            variant.synchronize()
            times.append(time.perf_counter() - start)
        latency[str(batch)] = 1000 * sorted(times)[len(times) // 2]
    model.train()
    return latency


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)


def train(
    config: TrainConfig,
    dataset: Dataset | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Train one net with the seed's recipe (or the variant the config names).

    Returns the trained (eager) model and its run record. Raises TrainingDiverged on a NaN or
    infinite loss, before anything is written.
    """
    config.validate()
    variant = config.variant()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    busy = busy_check()
    dataset = dataset or load_dataset(config.dataset, config.data_root)
    check_batch_size(config.batch_size, dataset.train)

    torch.manual_seed(config.seed)
    if variant.device == "cuda":
        torch.cuda.manual_seed_all(config.seed)
    reset_peak_memory(variant.device)
    model = variant.place(build_model(config.model))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step = make_train_step(model, optimizer, variant)
    batches = make_loader(config.loader, dataset.train, config.batch_size, variant.device)

    epochs: list[dict] = []
    contention = CpuContention()
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        bar = _progress_bar(len(batches), f"epoch {epoch}/{config.epochs}", progress)

        def on_step(steps: int, total: torch.Tensor, bar=bar) -> None:
            if bar is not None:
                bar.update(1)
                if steps % 50 == 0:
                    bar.set_postfix(loss=f"{float(total) / steps:.4f}")

        try:
            result = train_epoch(step, batches, variant, on_step)
        finally:
            if bar is not None:
                bar.close()
        if not torch.isfinite(torch.tensor(result.mean_loss)):
            raise TrainingDiverged(
                f"loss became {result.mean_loss} in epoch {epoch} of {config.model} "
                f"(lr {config.lr}, {variant.precision}); nothing was written"
            )
        record = {"epoch": epoch, "cost": result.mean_loss, "seconds": result.seconds, "steps": result.steps}
        if config.eval_every_epoch or epoch == config.epochs:
            # Evaluation runs the eager net in fp32 for every variant: one yardstick for all.
            record["test_accuracy"] = evaluate(model, dataset.test, variant.device, config.eval_batch_size)
        epochs.append(record)
        log(SEED_EPOCH_LINE.format(epoch, result.mean_loss))
    wall = time.perf_counter() - started

    accuracy = epochs[-1]["test_accuracy"]
    seed_style = evaluate(model, dataset.test, variant.device, config.eval_batch_size, scale=False)
    train_seconds = sum(e["seconds"] for e in epochs)
    latency = inference_latency_ms(model, variant) if config.measure_latency else {}
    peak, peak_kind = peak_memory_mb(variant.device)
    run = {
        "kind": "mnist-bench train run",
        "name": config.run_name(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "variant": asdict(variant) | {"tag": variant.tag, "loader": config.loader},
        "dataset": {"name": dataset.name, "source": dataset.source, **dataset.counts()},
        "model": {"name": config.model, "params": model.num_params(), "flops_per_image": model.flops_per_image()},
        "epochs": epochs,
        "test_accuracy": accuracy,
        "seed_style_accuracy": seed_style,
        "train_seconds": train_seconds,
        "wall_seconds": wall,  # includes the per-epoch evaluations
        "train_images_per_second": sum(e["steps"] for e in epochs) * config.batch_size / train_seconds,
        "inference_ms": latency,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "device_name": device_name(variant.device),
        "machine": machine_info(),
        "busy_before_start": busy,
        "cores_used_by_others_during_run": contention.cores_used_by_others(),
    }
    return model, run


def save_weights(model: nn.Module, path: Path) -> Path:
    """Atomic: the state_dict (plain tensors, loadable with weights_only=True)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic.save_torch(path, state)


def load_weights(model_name: str, path: Path) -> nn.Module:
    """A net with weights from `path`; a missing, corrupt or mismatched file is a CheckpointError."""
    model = build_model(model_name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise CheckpointError(f"no weights file at {path}") from None
    except Exception as exc:  # unpickling errors, zip errors, missing/unexpected keys, shape mismatch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {model_name} weights from {path}: {first}") from None
    return model
