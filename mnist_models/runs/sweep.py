"""Sweeps: a grid of model x variant x seed through the one training loop, into a RunStore.

A sweep started again skips every run whose record exists and loads; a run that was interrupted
left no record and is trained again from its start. A record that does not load is kept aside
(`.bad`) and its run trained again. Each run is claimed before it is trained, so two sweeps on one
folder split the work instead of doing it twice. With redo_contended, runs whose records say
another process shared the CPU are trained again; the new record keeps the old figures under
"replaces".
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.data import load_dataset
from ..core.recipes import Recipe
from ..core.variants import parse_tag
from ..system.errors import RunExists, TrainingDiverged
from .config import SPEC_FIELDS, RunKey, TrainConfig
from .records import RunStore
from .train import train


def parse_variant_spec(spec: str) -> dict:
    """'tensor-eager-fp32-cl' -> TrainConfig fields; axes the spec leaves out keep the seed's choice."""
    return parse_tag(spec, SPEC_FIELDS)


BEST = "best"  # the variant `mnist-bench tune` stored for this machine, per net


def spec_choice(spec: str, model: str) -> dict:
    """A variant spec's TrainConfig fields; 'best' is this machine's tuned choice for the net (threads included)."""
    if spec == BEST:
        from .tune import best_choice

        return best_choice(model)
    return parse_variant_spec(spec)


def sweep_configs(
    base: TrainConfig,
    models: Iterable[str],
    variants: Iterable[str],
    seeds: Iterable[int],
    recipes: Iterable[str] | None = None,
    to_target: bool = False,
) -> list[TrainConfig]:
    """Seed-major order: every model, recipe and variant gets its first seed before any gets a second.
    `recipes` are recipe specs (core/recipes.py; None: the base's); `to_target` stops each run at its net's target."""
    models, variants = list(models), list(variants)
    choices = {(m, v): spec_choice(v, m) for m in models for v in variants}  # a bad spec fails before any training
    plans = [Recipe.parse(spec) for spec in recipes] if recipes else [base.recipe]
    configs = [
        replace(base, model=m, seed=seed).with_recipe(r).with_choice(choices[m, v])
        for seed in seeds
        for m in models
        for r in plans
        for v in variants
    ]
    return [c.to_target() for c in configs] if to_target else configs


@dataclass
class _Plan:
    needed: bool
    path: Path | None = None  # where the record goes: an existing record's path, or None for the canonical one
    replaces: dict | None = None
    problem: str | None = None  # the stored record does not load


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its config and the key it resolved to when the sweep started."""

    config: TrainConfig
    key: RunKey


def _plan(store: RunStore, key: RunKey, redo_contended: bool) -> _Plan:
    """Does this run need training? Reads the folder, changes nothing."""
    found = store.find(key)
    if found.problem:
        return _Plan(True, found.path, problem=found.problem)
    if found.record is None:
        return _Plan(True)
    if redo_contended and found.record.contended:
        return _Plan(True, found.path, found.record.superseded())
    return _Plan(False, found.path)


def plan_sweep(
    configs: list[TrainConfig],
    store: RunStore,
    redo_contended: bool,
    log,
    default_threads: int | None = None,
    device_for=None,
) -> tuple[list[Run], int, dict[TrainConfig, RunKey]]:
    """Clean what killed writers left, resolve every run's key (devices fail here, before hours of
    training; threads are each config's own, else `default_threads`: a Ray task's reserved CPUs;
    `device_for(config)`: the device where the sweep places the run, when not this machine), and
    return (runs still to train, finished runs, every config's key)."""
    for dataset in sorted({c.dataset for c in configs}):
        for line in store.clean_leftovers(dataset):
            log(line)
    runs = [Run(c, c.resolve(default_threads, device_for(c) if device_for else None)) for c in configs]
    todo = [run for run in runs if _plan(store, run.key, redo_contended).needed]
    return todo, len(runs) - len(todo), {run.config: run.key for run in runs}


def take(store: RunStore, run: Run, redo_contended: bool, counts: dict, write) -> _Plan | None:
    """Claim a run and plan it again under the claim (another sweep may have finished it since).
    Returns the plan when this sweep is to train it, holding the claim; None (claim released) otherwise."""
    key = run.key
    if not store.claim(key):
        write(f"== {key.dataset} {key.name}: being trained by another sweep, skipped")
        counts["claimed_elsewhere"] += 1
        return None
    plan = _plan(store, key, redo_contended)
    if plan.problem:
        aside = store.set_aside(plan.path)
        write(f"   {plan.problem}; kept aside as {aside.name}, training the run again")
    if not plan.needed:
        store.release(key)
        write(f"== {key.dataset} {key.name}: already finished, skipped")
        counts["skipped"] += 1
        return None
    return plan


def started_line(run: Run, plan: _Plan) -> str:
    retrain = " (retraining: its record was timed on a shared CPU)" if plan.replaces else ""
    return f"== {run.key.dataset} {run.key.name}{retrain}"


def store_result(store: RunStore, plan: _Plan, record, weights, counts: dict, write, where: str = "") -> Path | None:
    """Write a finished run (record + weights, all or nothing) and say so. When another command stored
    the same run meanwhile (a `train` beside this sweep), that one is kept and this run is skipped:
    the sweep goes on (None)."""
    record.replaces = plan.replaces
    try:
        saved = store.save(record, weights, path=plan.path, overwrite=plan.path is not None)
    except RunExists as exc:
        write(f"   {record.name}: another command finished this run meanwhile; its record is kept, this one dropped ({exc})")
        counts["skipped"] += 1
        return None
    counts["trained"] += 1
    write(
        f"   {record.name}{where}: test accuracy {record.test_accuracy:.4f} (seed-style {record.seed_style_accuracy:.4f}), "
        f"{record.train_seconds:.0f} s training -> {saved}"
    )
    return saved


def new_counts(skipped: int, keys: dict[TrainConfig, RunKey]) -> dict:
    """What a sweep returns: its counts, and the key each config resolved to where the sweep placed it
    (a Ray task's threads and device), so that a caller reads back the very records it stored."""
    return {"trained": 0, "skipped": skipped, "claimed_elsewhere": 0, "failed": [], "keys": keys}


def run_sweep(
    configs: list[TrainConfig],
    runs_dir: Path,
    progress: bool = True,
    log=print,
    redo_contended: bool = False,
    divergence_fails_run: bool = False,
) -> dict:
    """Train every config that has no finished record yet (and, with redo_contended, every run whose
    record says the CPU was shared), one after another in this process; returns counts of trained,
    skipped and claimed-elsewhere runs. With divergence_fails_run (a recipe search: too high a rate is
    a candidate's failure), a run that diverges is listed under "failed" and the sweep goes on;
    otherwise its TrainingDiverged ends the sweep."""
    store = RunStore(runs_dir)
    todo, skipped, keys = plan_sweep(configs, store, redo_contended, log)
    if skipped:
        log(f"skipping {skipped} finished run(s) already in {runs_dir}")
    counts = new_counts(skipped, keys)
    if not todo:
        return counts
    datasets = {name: load_dataset(name, todo[0].config.data_root) for name in {run.key.dataset for run in todo}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run", file=sys.stderr, position=1, dynamic_ncols=True)
    write = bar.write if bar is not None else log
    try:
        for run in todo:
            plan = take(store, run, redo_contended, counts, write)
            if plan is None:
                continue
            try:
                write(started_line(run, plan))
                model, record = train(run.config, datasets[run.key.dataset], progress=progress, log=write, key=run.key)
                store_result(store, plan, record, model, counts, write)
            except TrainingDiverged as exc:
                if not divergence_fails_run:
                    raise
                write(f"   {exc}")
                counts["failed"].append((run.key.name, str(exc)))
            finally:
                store.release(run.key)
            if bar is not None:
                bar.update(1)
    finally:
        store.prune_empty()
        if bar is not None:
            bar.close()
    return counts
