"""The one training loop both nets share, and evaluate().

The loop reproduces the seed's recipe (Adam 1e-3, batch 100, seed 777, shuffle + drop_last,
mean batch loss printed per epoch) and fixes its evaluation: the test set is fed in batches,
scaled to [0, 1] as in training. The seed's own figure (raw 0..255 pixels) is computed too, as
`seed_style_accuracy`, so its table can be reproduced and explained.

`train()` reads top to bottom in four steps: set up (data, seeded net, optimizer, loader, schedule),
fit (the epochs), measure (both accuracies, latency, memory) and record (a records.RunRecord). It runs
alone or as one rank of a DDP job alike: it asks its scale/job.py job for the collectives, which a
solo job answers itself. `train_and_store()` is the `train` command around it: the job, the
stored-run check and the save.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import blocks
from ..core.data import Dataset, Split, check_batch_size, load_dataset, set_epoch
from ..core.harness import build, make_forward
from ..core.nets import NUM_CLASSES
from ..core.recipes import scheduler
from ..core.variants import Variant, device_name
from ..scale.distributed import Rank
from ..scale.job import SOLO, Solo, open_job
from ..system.allocator import keep_freed_memory
from ..system.atomic import check_writable_dir
from ..system.errors import MnistBenchError, RunExists, TrainingDiverged, UsageError
from ..system.machine import (
    CpuContention,
    busy_check,
    emulated_half_warning,
    machine_info,
    peak_memory_mb,
    reset_peak_memory,
    set_threads,
)
from .config import RunKey, TrainConfig
from .records import DatasetInfo, EpochStats, ModelInfo, RunRecord, RunStore

SEED_EPOCH_LINE = "[Epoch: {:>4}] cost = {:>.9}"  # the seed's print format, byte for byte
# Divergence, beyond a NaN or infinite loss: an epoch's mean loss above 10x that of a uniform guess
# (ln 10 = 2.30; only exploding logits get there), or a final test accuracy no better than 1.5x chance.
DIVERGED_LOSS = 10 * math.log(NUM_CLASSES)
CHANCE_ACCURACY = 1.5 / NUM_CLASSES


# Test-set batches for evaluation. Measured on a Zen 3 (AVX2, 2 threads), 10,000 fashion-mnist images:
# simple 3.7 s contiguous at 1000, 0.93 s channels_last at 100; deep 5.4 s and 2.3 s. Large batches
# leave the caches (batch 1000 of the first conv's output alone is 100 MB).
EVAL_BATCH = 100


def evaluate(
    model: nn.Module, split: Split, device: str, batch_size: int = EVAL_BATCH, scale: bool = True, fast: bool = True
) -> float:
    """Test accuracy, in batches, in eval mode, fp32 eager for every variant: one yardstick.

    scale=True feeds pixels / 255 as in training; scale=False feeds raw 0..255 floats, which is
    what the seed's script did (its printed accuracies come from this). fast=True evaluates a
    channels_last copy of the net on CPU under inference_mode (the same function: the tests check
    that both nets' accuracies equal the contiguous evaluation's); the training net is left as it is.
    """
    was_training = model.training
    layout = torch.channels_last if fast and device == "cpu" else torch.contiguous_format
    net = copy.deepcopy(model).to(memory_format=layout) if layout is torch.channels_last else model
    net.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(split), batch_size):
                x = split.images[start : start + batch_size].to(device).unsqueeze(1).float()
                if scale:
                    x = x.div_(255)
                y = split.labels[start : start + batch_size].to(device)
                correct += int((net(x.contiguous(memory_format=layout)).argmax(1) == y).sum())
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
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> EpochResult:
    """One pass over `batches`; losses are summed on the device and read once at the end.

    Summing detached losses (not `avg_cost += cost / total_batch`) keeps no autograd history,
    and one `.item()` per epoch keeps the host from waiting on the device every step. `schedule`
    (a recipe's learning-rate schedule) moves the rate after every optimizer step.
    """
    start = time.perf_counter()
    total = first = None
    steps = images = 0
    for x, y in batches:
        loss = step(variant.to_input(x), y.to(variant.device, non_blocking=True))
        if schedule is not None:
            schedule.step()
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

        def call(x=x):
            forward(x)
            variant.synchronize()

        for _ in range(2):
            call()
        latency[str(batch)] = 1000 * statistics.median(blocks.time_steps(call, repeats))
    model.train()
    return latency


@contextlib.contextmanager
def _progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int, torch.Tensor], None] | None]:
    """An epoch's progress bar on stderr (with the running loss every 50 steps): yields train_epoch's on_step."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)

    def on_step(steps: int, total: torch.Tensor) -> None:
        bar.update(1)
        if steps % 50 == 0:
            bar.set_postfix(loss=f"{float(total) / steps:.4f}")

    try:
        yield on_step
    finally:
        bar.close()


def run_key(config: TrainConfig, job: Solo = SOLO) -> RunKey:
    """A run's key as it starts: the config's threads, else the job's default (a rank's share of the CPUs)."""
    return config.resolve(job.threads())


def _diverged(config: TrainConfig, epoch: int, why: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged in epoch {epoch} of {config.model} ({why}; lr {config.lr}, {config.variant.precision}); "
        "nothing was written"
    )


def _check_loss(config: TrainConfig, epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise _diverged(config, epoch, f"loss became {loss}")
    if loss > DIVERGED_LOSS:
        raise _diverged(config, epoch, f"mean loss {loss:.3g} is above {DIVERGED_LOSS:.1f}, 10x a uniform guess's")


def _silent(line: str) -> None:
    pass


def train(
    config: TrainConfig,
    dataset: Dataset | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    job: Solo = SOLO,
    key: RunKey | None = None,
) -> tuple[nn.Module, RunRecord | None]:
    """Train one net with the seed's recipe (or the variant and recipe the config names).

    Returns the trained (eager) model and its run record, unsaved. Raises TrainingDiverged (see
    DIVERGED_LOSS and CHANCE_ACCURACY) before anything is written. In a DDP `job` (scale/job.py) every
    rank trains its shard and every decision is the job's, made alike on every rank: the loss judged
    is the mean over ranks, an epoch's time the slowest rank's, and only rank 0 evaluates (its accuracy
    is shared for the final check and for stopping at a target), so no rank stops alone and leaves the
    others in a collective. Only rank 0 logs and gets a record.
    """
    # Set up: threads, data, the seeded net and its optimizer, the loader, the schedule.
    setting_up = time.perf_counter()
    set_up_contention = CpuContention()  # the set-up is the busy check's sample: no idle wait before the work
    key = key or run_key(config, job)
    variant = key.variant
    log = log if job.is_main else _silent
    set_threads(key.threads)
    keep_freed_memory()  # also where train() runs without the CLI: a Ray worker, a library caller
    machine = machine_info()  # taken as the run starts: the code id is the code that runs, not what the tree holds later
    dataset = dataset or load_dataset(config.dataset, config.data_root)
    check_batch_size(config.batch_size, dataset.train)
    job.agree("data", {"name": dataset.name, **dataset.counts(), "digest": dataset.digest()})  # same images, same order
    reset_peak_memory(variant.device)
    work = build(config.model, variant, "train", seed=config.seed, lr=config.lr, wrap=job.wrapper(variant.device))
    job.seed_own_randomness(config.seed)
    # Our own CPU time (and our job's other ranks') is taken out: the rest is somebody else's.
    busy = busy_check(since=set_up_contention, siblings_seconds=job.siblings_cpu_seconds(set_up_contention.own_seconds()))
    described = job.describe(config.per_rank_batch, torch.get_num_threads())
    if described and described["oversubscribed"]:
        busy = busy | {
            "busy": True,
            "reason": f"{described['local_world_size']} ranks x {described['threads_per_rank']} threads on {busy['cores']} cores",
        }
    batches = job.loader(config.loader, dataset.train, config.per_rank_batch, variant.device, config.seed)
    schedule = scheduler(work.optimizer, config.schedule, config.epochs * len(batches))
    contention = CpuContention()
    setup_seconds = time.perf_counter() - setting_up
    emulated = emulated_half_warning(variant.device, variant.precision)
    if emulated and job.is_main:
        print(emulated, file=sys.stderr)  # before the epochs: this run will be slow, and why

    # Fit: the epochs. Each records when its evaluation ended, counted from the start of training:
    # a time to accuracy includes the evaluations, as MLPerf's does.
    started = time.perf_counter()
    epochs: list[EpochStats] = []
    per_rank_seconds: list[list[float]] = []
    for epoch in range(1, config.epochs + 1):
        work.model.train()
        set_epoch(batches, epoch)  # a DistributedSampler (DDP + the seed's loader) reshuffles only when told
        with _progress_bar(len(batches), f"epoch {epoch}/{config.epochs}", progress and job.is_main) as on_step:
            result = train_epoch(work.step, batches, variant, on_step, schedule)
        loss = job.mean(result.mean_loss)
        per_rank_seconds.append(job.gather(result.seconds))
        _check_loss(config, epoch, loss)
        accuracy = eval_seconds = None
        if job.is_main and (config.eval_every_epoch or epoch == config.epochs):
            # Evaluation runs the eager net in fp32 for every variant: one yardstick for all.
            evaluated = time.perf_counter()
            accuracy = evaluate(work.model, dataset.test, variant.device, config.eval_batch_size)
            eval_seconds = time.perf_counter() - evaluated
        elapsed = time.perf_counter() - started
        epochs.append(EpochStats(epoch, loss, max(per_rank_seconds[-1]), result.steps, accuracy, eval_seconds, elapsed))
        log(SEED_EPOCH_LINE.format(epoch, loss))
        if config.target is not None and job.from_main(accuracy is not None and accuracy >= config.target):
            log(f"reached the target {config.target:.2%} after epoch {epoch}: {accuracy:.4f} at {elapsed:.1f} s")
            break
    final = job.from_main(epochs[-1].test_accuracy)
    if final <= CHANCE_ACCURACY:
        raise _diverged(config, len(epochs), f"final test accuracy {final:.3f} is at chance")
    wall = time.perf_counter() - started
    # The other local ranks' CPU time is this job's, not a neighbour's (a collective: before rank 0 goes on alone).
    others = contention.cores_used_by_others(job.siblings_cpu_seconds(contention.own_seconds()))
    job.finish()  # the job's collectives end here; rank 0's evaluation and saving run alone
    if not job.is_main:
        return work.model, None

    # Measure what only the finished net can say: the seed's evaluation, memory, latency.
    model = work.model
    seed_style = evaluate(model, dataset.test, variant.device, config.eval_batch_size, scale=False)
    peak, peak_kind = peak_memory_mb(variant.device)  # training's peak, before the batch-1000 latency run adds its own
    latency = inference_latency_ms(model, variant) if config.measure_latency else {}
    if described:
        described["epoch_seconds_per_rank"] = [list(ranks) for ranks in zip(*per_rank_seconds)]  # [rank][epoch]

    # Record.
    train_seconds = sum(e.seconds for e in epochs)
    record = RunRecord(
        config=config,
        key=key,
        dataset=DatasetInfo(dataset.name, dataset.source, **dataset.counts()),
        model=ModelInfo(config.model, model.num_params(), model.flops_per_image()),
        epochs=epochs,
        test_accuracy=epochs[-1].test_accuracy,
        seed_style_accuracy=seed_style,
        train_seconds=train_seconds,
        wall_seconds=wall,
        train_images_per_second=sum(e.steps for e in epochs) * config.batch_size / train_seconds,
        device_name=device_name(variant.device),
        machine=machine,
        busy_before_start=busy,
        cores_used_by_others_during_run=others,
        inference_ms=latency,
        peak_memory_mb=peak,
        peak_memory_kind=peak_kind,
        distributed=described,
        setup_seconds=setup_seconds,
    )
    return model, record


def _refusal(store: RunStore, key: RunKey, dataset: str, overwrite: bool) -> tuple[MnistBenchError | None, object, bool]:
    """Rank 0's check before any work: (the reason to stop or None, what the store holds, whether we claimed the run)."""
    found = store.find(key)
    if found.path is not None and not overwrite:
        state = "a finished run of this recipe" if found.record else f"a record that does not load ({found.problem})"
        return (
            RunExists(f"{state} is already stored at {found.path}; it is kept (pass --overwrite to train and replace it)"),
            found,
            False,
        )
    check_writable_dir(store.folder(dataset))  # before the claim creates the folder
    if not store.claim(key):  # a sweep (or another train) is training this very run now
        return (
            RunExists(f"this run is being trained by {store.claim_holder(key)} right now; wait for it, or pick another seed"),
            found,
            False,
        )
    return None, found, True


def train_and_store(
    config: TrainConfig,
    store: RunStore,
    overwrite: bool = False,
    progress: bool = False,
    rank: Rank | None = None,
    log: Callable[[str], None] = print,
) -> tuple[RunRecord | None, Path | None]:
    """`mnist-bench train`: refuse a recipe already stored (unless overwrite) before any work, train,
    and write record + weights. Under DDP every rank calls it in its job (rank 0 decides and writes;
    the others get (None, None)); rank 0 holds the run's claim while it trains, so a sweep on the same
    folder skips this run."""
    problem, found, claimed = None, None, False
    key = None
    try:
        with open_job(rank, config.backend, config.variant.resolved().device) as job:
            job.agree("config", config.to_json())
            key = run_key(config, job)  # resolved once: the check below, the run and the save use this one key
            if job.is_main:
                problem, found, claimed = _refusal(store, key, config.dataset, overwrite)
            job.decide(problem)
            model, record = train(config, progress=progress, job=job, log=log, key=key)
        if record is None:
            return None, None
        return record, store.save(record, model, path=found.path, overwrite=overwrite)
    finally:
        if claimed:
            store.release(key)
            store.prune_empty()  # a run that failed leaves no empty folder behind
