"""The one training loop both nets share, and evaluate().

The loop reproduces the seed's recipe (Adam 1e-3, batch 100, seed 777, shuffle + drop_last,
mean batch loss printed per epoch) and fixes its evaluation: the test set is fed in batches,
scaled to [0, 1] as in training. The seed's own figure (raw 0..255 pixels) is computed too, as
`seed_style_accuracy`, so its table can be reproduced and explained.

`train()` reads as four steps: set up (data, seeded net, optimizer, loader), fit (the epochs),
measure (both accuracies, latency, memory) and record (a records.RunRecord). `train_and_store()` is
the `train` command around it: the stored-run check, DDP's process group, and the save.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import blocks
from ..core.data import Dataset, Split, check_batch_size, load_dataset, make_loader, set_epoch
from ..core.harness import Workload, build, make_forward
from ..core.nets import NUM_CLASSES
from ..core.recipes import scheduler
from ..core.variants import Variant, device_name
from ..scale import distributed
from ..scale.distributed import Rank
from ..system.allocator import keep_freed_memory
from ..system.atomic import check_writable_dir
from ..system.errors import RunExists, TrainingDiverged, UsageError
from ..system.machine import (
    CpuContention,
    busy_check,
    code_fingerprint,
    emulated_half_warning,
    git_commit,
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

        def call(x=x):
            forward(x)
            variant.synchronize()

        for _ in range(2):
            call()
        latency[str(batch)] = 1000 * statistics.median(blocks.time_steps(call, repeats))
    model.train()
    return latency


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)


@dataclass
class _Setup:
    config: TrainConfig
    key: RunKey
    dataset: Dataset
    work: Workload
    batches: object
    busy: dict
    contention: CpuContention
    rank: Rank | None
    job: dict | None  # the distributed job, for the record
    machine: dict  # taken when the run starts: the code id is the code that runs, not what the tree holds later


def run_key(config: TrainConfig, rank: Rank | None = None) -> RunKey:
    """A run's key as it starts: under DDP each rank gets the CPUs it may use / local ranks (torchrun's
    OMP_NUM_THREADS=1 is replaced), unless the config names its threads."""
    return config.resolve(distributed.default_threads(rank))


def _set_up(config: TrainConfig, key: RunKey, dataset: Dataset | None, rank: Rank | None) -> _Setup:
    variant = key.variant
    set_threads(key.threads)
    keep_freed_memory()  # also where train() runs without the CLI: a Ray worker, a library caller
    busy = busy_check()  # before any work of ours, so the busy share is somebody else's
    dataset = dataset or load_dataset(config.dataset, config.data_root)
    check_batch_size(config.batch_size, dataset.train)
    if rank:  # every rank must train on the same images, in the same order of files
        distributed.agree("data", {"name": dataset.name, **dataset.counts(), "digest": dataset.digest()})
    reset_peak_memory(variant.device)
    wrap = (lambda model: distributed.wrap(model, variant.device)) if rank else None
    work = build(config.model, variant, "train", seed=config.seed, lr=config.lr, wrap=wrap)
    job = None
    if rank:
        torch.manual_seed(config.seed + rank.rank)  # same initial weights everywhere (and DDP broadcasts rank 0's); own dropout
        job = distributed.describe(rank, dist_backend(), config.per_rank_batch, torch.get_num_threads())
        if job["oversubscribed"]:
            busy = busy | {
                "busy": True,
                "reason": f"{rank.local_world_size} ranks x {job['threads_per_rank']} threads on {busy['cores']} cores",
            }
    batches = make_loader(
        config.loader,
        dataset.train,
        config.per_rank_batch,
        variant.device,
        rank=rank.rank if rank else 0,
        world=config.ranks,
        shuffle_seed=config.seed if rank else None,
    )
    _follow_schedule(work, config.schedule, config.epochs * len(batches))
    return _Setup(config, key, dataset, work, batches, busy, CpuContention(), rank, job, machine_info())


def _follow_schedule(work: Workload, schedule: str, total_steps: int) -> None:
    """Step the recipe's learning-rate schedule after every optimizer step (the seed's constant rate: nothing)."""
    lr_scheduler = scheduler(work.optimizer, schedule, total_steps)
    if lr_scheduler is None:
        return
    step = work.step

    def scheduled_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = step(x, y)
        lr_scheduler.step()
        return loss

    work.step = scheduled_step


def dist_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend()


def _diverged(config: TrainConfig, epoch: int, why: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged in epoch {epoch} of {config.model} ({why}; lr {config.lr}, {config.variant.precision}); "
        "nothing was written"
    )


def _fit(s: _Setup, progress: bool, log: Callable[[str], None]) -> list[EpochStats]:
    """The epochs. Under DDP every decision is the job's, made alike on every rank: the loss judged is
    the mean over ranks, the epoch's time the slowest rank's, and only rank 0 evaluates (its accuracy
    is shared for the final check and for stopping at a target), so no rank stops alone and leaves
    the others in a collective. Each epoch records when its evaluation ended, counted from the start
    of training: a time to accuracy includes the evaluations, as MLPerf's does."""
    config, variant = s.config, s.work.variant
    started = time.perf_counter()
    main = s.rank is None or s.rank.is_main
    epochs: list[EpochStats] = []
    per_rank_seconds: list[list[float]] = []
    for epoch in range(1, config.epochs + 1):
        s.work.model.train()
        set_epoch(s.batches, epoch)  # a DistributedSampler (DDP + the seed's loader) reshuffles only when told
        bar = _progress_bar(len(s.batches), f"epoch {epoch}/{config.epochs}", progress)

        def on_step(steps: int, total: torch.Tensor, bar=bar) -> None:
            if bar is not None:
                bar.update(1)
                if steps % 50 == 0:
                    bar.set_postfix(loss=f"{float(total) / steps:.4f}")

        try:
            result = train_epoch(s.work.step, s.batches, variant, on_step)
        finally:
            if bar is not None:
                bar.close()
        loss, seconds = result.mean_loss, result.seconds
        if s.rank:
            loss = distributed.mean(loss)
            per_rank_seconds.append(distributed.gather(seconds))
            seconds = max(per_rank_seconds[-1])
        if not math.isfinite(loss):
            raise _diverged(config, epoch, f"loss became {loss}")
        if loss > DIVERGED_LOSS:
            raise _diverged(config, epoch, f"mean loss {loss:.3g} is above {DIVERGED_LOSS:.1f}, 10x a uniform guess's")
        accuracy = eval_seconds = None
        if main and (config.eval_every_epoch or epoch == config.epochs):
            # Evaluation runs the eager net in fp32 for every variant: one yardstick for all.
            evaluated = time.perf_counter()
            accuracy = evaluate(s.work.model, s.dataset.test, variant.device, config.eval_batch_size)
            eval_seconds = time.perf_counter() - evaluated
        elapsed = time.perf_counter() - started
        epochs.append(EpochStats(epoch, loss, seconds, result.steps, accuracy, eval_seconds, elapsed))
        log(SEED_EPOCH_LINE.format(epoch, loss))
        if config.target is not None:
            reached = accuracy is not None and accuracy >= config.target
            if distributed.from_main(reached) if s.rank else reached:
                log(f"reached the target {config.target:.2%} after epoch {epoch}: {accuracy:.4f} at {elapsed:.1f} s")
                break
    final = distributed.from_main(epochs[-1].test_accuracy) if s.rank else epochs[-1].test_accuracy
    if final <= CHANCE_ACCURACY:
        raise _diverged(config, len(epochs), f"final test accuracy {final:.3f} is at chance")
    if s.job is not None:
        s.job["epoch_seconds_per_rank"] = [list(ranks) for ranks in zip(*per_rank_seconds)]  # [rank][epoch]
    return epochs


def train(
    config: TrainConfig,
    dataset: Dataset | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    rank: Rank | None = None,
    key: RunKey | None = None,
) -> tuple[nn.Module, RunRecord | None]:
    """Train one net with the seed's recipe (or the variant the config names).

    Returns the trained (eager) model and its run record, unsaved. Raises TrainingDiverged (see
    DIVERGED_LOSS and CHANCE_ACCURACY) before anything is written. Under DDP (`rank`, its process
    group started) every rank trains its shard; only rank 0 evaluates, logs and gets a record.
    """
    main = rank is None or rank.is_main
    setting_up = time.perf_counter()
    s = _set_up(config, key or run_key(config, rank), dataset, rank)
    setup_seconds = time.perf_counter() - setting_up
    emulated = emulated_half_warning(s.work.variant.device, s.work.variant.precision)
    if emulated and main:
        print(emulated, file=sys.stderr)  # before the epochs: this run will be slow, and why
    started = time.perf_counter()
    epochs = _fit(s, progress and main, log if main else (lambda line: None))
    wall = time.perf_counter() - started
    # The other local ranks' CPU time is this job's, not a neighbour's (a collective: before rank 0 goes on alone).
    siblings = distributed.siblings_cpu_seconds(s.contention.own_seconds()) if rank else 0.0
    # Contention over the training, the timed part; not over rank 0's solo end, while the other ranks exit.
    others = s.contention.cores_used_by_others(siblings)
    if rank:
        distributed.finish()  # the job's collectives end here; rank 0's evaluation and saving run alone
    if not main:
        return s.work.model, None

    model, variant = s.work.model, s.work.variant
    seed_style = evaluate(model, s.dataset.test, variant.device, config.eval_batch_size, scale=False)
    peak, peak_kind = peak_memory_mb(variant.device)  # training's peak, before the batch-1000 latency run adds its own
    latency = inference_latency_ms(model, variant) if config.measure_latency else {}
    train_seconds = sum(e.seconds for e in epochs)

    record = RunRecord(
        config=config,
        key=s.key,
        dataset=DatasetInfo(s.dataset.name, s.dataset.source, **s.dataset.counts()),
        model=ModelInfo(config.model, model.num_params(), model.flops_per_image()),
        epochs=epochs,
        test_accuracy=epochs[-1].test_accuracy,
        seed_style_accuracy=seed_style,
        train_seconds=train_seconds,
        wall_seconds=wall,
        train_images_per_second=sum(e.steps for e in epochs) * config.batch_size / train_seconds,
        device_name=device_name(variant.device),
        machine=s.machine,
        busy_before_start=s.busy,
        cores_used_by_others_during_run=others,
        inference_ms=latency,
        peak_memory_mb=peak,
        peak_memory_kind=peak_kind,
        distributed=s.job,
        setup_seconds=setup_seconds,
    )
    return model, record


def train_and_store(
    config: TrainConfig,
    store: RunStore,
    overwrite: bool = False,
    progress: bool = False,
    rank: Rank | None = None,
    log: Callable[[str], None] = print,
) -> tuple[RunRecord | None, Path | None]:
    """`mnist-bench train`: refuse a recipe already stored (unless overwrite) before any work, train,
    and write record + weights. Under DDP every rank calls it (rank 0 decides and writes; the others
    get (None, None)); it starts and ends the process group, and a collective that fails because
    another rank died or hung becomes a one-line RankFailed."""
    main = rank is None or rank.is_main
    claimed = False  # rank 0 holds the run's claim while it trains: a sweep on the same folder skips this run
    key = run_key(config, rank)  # resolved once: the check below, the run and the save use this one key
    try:
        with distributed.rank_work(rank):
            if rank:
                distributed.start(rank, config.backend, key.variant.device)
                distributed.agree("config", config.to_json())
                # the same flags are not the same job: a rank on another checkout (another shuffle, another net)
                distributed.agree("code", {"commit": git_commit(), "source": code_fingerprint()})
            problem, found = None, None
            if main:
                found = store.find(key)
                if found.path is not None and not overwrite:
                    state = "a finished run of this recipe" if found.record else f"a record that does not load ({found.problem})"
                    problem = f"{state} is already stored at {found.path}; it is kept (pass --overwrite to train and replace it)"
                else:
                    check_writable_dir(store.folder(config.dataset))  # before the claim creates the folder
                    if not (claimed := store.claim(key)):  # a sweep (or another train) is training this very run now
                        problem = (
                            f"this run is being trained by {store.claim_holder(key)} right now; wait for it, or pick another seed"
                        )
            if rank:
                distributed.decide(rank, problem)
            elif problem:
                raise RunExists(problem)
            model, record = train(config, progress=progress, rank=rank, log=log, key=key)
        if record is None:
            return None, None
        return record, store.save(record, model, path=found.path, overwrite=overwrite)
    finally:
        if claimed:
            store.release(key)
            store.prune_empty()  # a run that failed leaves no empty folder behind
