"""Run records on disk, and sweeps: a grid of model x variant x seed through the one training loop.

Each finished run is a JSON record (written last, atomically, after its weights), so a record on
disk means a finished run. A sweep started again skips every run whose record exists; a run that
was interrupted left no record and is trained again from its start. With redo_contended, runs
whose records say another process shared the CPU are trained again, and the new record keeps the
old one's figures under "replaces".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from . import atomic
from .data import load_dataset
from .errors import CheckpointError, UsageError
from .machine import run_was_contended
from .train import TrainConfig, save_weights, train

DEFAULT_RUNS_DIR = Path("reports/runs")
# Variant specs name the axes a sweep can switch, e.g. "seed-eager-fp32", "tensor-eager-fp32-cl".
_LOADER_TOKENS = {"seed": "seed", "tensor": "tensor"}
_COMPILE_TOKENS = {"eager": "off", "compile": "default", "autotune": "max-autotune-no-cudagraphs"}
_PRECISION_TOKENS = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


def parse_variant_spec(spec: str) -> dict:
    """'tensor-eager-fp32-cl' -> TrainConfig fields; unspecified axes keep the seed's choice."""
    fields: dict = {}
    for token in spec.split("-"):
        if token in _LOADER_TOKENS:
            fields["loader"] = _LOADER_TOKENS[token]
        elif token in _COMPILE_TOKENS:
            fields["compile"] = _COMPILE_TOKENS[token]
        elif token in _PRECISION_TOKENS:
            fields["precision"] = _PRECISION_TOKENS[token]
        elif token == "cl":
            fields["channels_last"] = True
        else:
            known = [*_LOADER_TOKENS, *_COMPILE_TOKENS, *_PRECISION_TOKENS, "cl"]
            raise UsageError(f"unknown token {token!r} in variant {spec!r}; tokens are: {', '.join(known)}")
    return fields


def record_paths(runs_dir: Path, config: TrainConfig) -> tuple[Path, Path]:
    """(record.json, weights.pt) for a run; runs are grouped by dataset so they never mix."""
    folder = Path(runs_dir) / config.dataset
    name = config.run_name()
    return folder / f"{name}.json", folder / "weights" / f"{name}.pt"


def save_run(model, record: dict, runs_dir: Path, config: TrainConfig) -> Path:
    record_path, weights_path = record_paths(runs_dir, config)
    save_weights(model, weights_path)
    record["weights"] = str(weights_path)
    atomic.write_json(record_path, record)  # last: its presence marks the run finished
    return record_path


def load_runs(runs_dir: Path) -> tuple[list[dict], list[str]]:
    """Every readable run record under runs_dir, and one line per file that could not be read."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory at {runs_dir}; train or sweep first (mnist-bench sweep --help)")
    runs, problems = [], []
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
            if record.get("kind") != "mnist-bench train run":
                continue  # some other JSON (a benchmark file, say)
            for key in ("config", "dataset", "model", "epochs", "test_accuracy"):
                if key not in record:
                    raise CheckpointError(f"missing field {key!r}")
        except (OSError, ValueError, CheckpointError, AttributeError) as exc:
            problems.append(f"skipped corrupt run record {path}: {exc}")
            continue
        record["_path"] = str(path)
        runs.append(record)
    return runs, problems


def sweep_configs(base: TrainConfig, models: Iterable[str], variants: Iterable[str], seeds: Iterable[int]) -> list[TrainConfig]:
    """Seed-major order: every model and variant gets its first seed before any gets a second."""
    configs = []
    for seed in seeds:
        for model in models:
            for spec in variants:
                config = replace(base, model=model, seed=seed, **parse_variant_spec(spec))
                config.validate()
                configs.append(config)
    return configs


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plan(path: Path, redo_contended: bool) -> tuple[bool, dict | None]:
    """(train this run?, the record it would replace): no record yet, or (when asked) a record whose
    times were taken on a shared CPU."""
    if not path.exists():
        return True, None
    if not redo_contended:
        return False, None
    record = _read_record(path)
    return record is not None and run_was_contended(record), record


def _superseded(record: dict) -> dict:
    """What a retrained run keeps of the record it replaces: enough to see whether the seed
    reproduced its accuracy and how much the contention had cost."""
    keep = ("test_accuracy", "seed_style_accuracy", "train_seconds", "cores_used_by_others_during_run", "created")
    machine = {k: record.get("machine", {}).get(k) for k in ("cpu", "cpu_isa", "torch_threads", "code")}
    return {
        "busy_before_start": record.get("busy_before_start", {}).get("busy"),
        **{k: record.get(k) for k in keep},
        "machine": machine,
    }


def run_sweep(configs: list[TrainConfig], runs_dir: Path, progress: bool = True, log=print, redo_contended: bool = False) -> dict:
    """Train every config that has no record yet (and, with redo_contended, every run whose record
    says the CPU was shared); returns counts of trained and skipped runs."""
    plans = [(c, *_plan(record_paths(runs_dir, c)[0], redo_contended)) for c in configs]
    todo = [c for c, needed, _ in plans if needed]
    redo = sum(1 for _, needed, old in plans if needed and old is not None)
    skipped = len(configs) - len(todo)
    if skipped:
        log(f"skipping {skipped} finished run(s) already in {runs_dir}")
    if redo:
        log(f"retraining {redo} run(s) whose records were timed on a shared CPU")
    if not todo:
        return {"trained": 0, "skipped": skipped}
    for config in todo:  # fail on a bad name before hours of training, not after
        config.variant()
    datasets = {name: load_dataset(name, todo[0].data_root) for name in {c.dataset for c in todo}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run", file=sys.stderr, position=1, dynamic_ncols=True)
    write = bar.write if bar is not None else log
    trained = 0
    try:
        for config in todo:
            needed, old = _plan(record_paths(runs_dir, config)[0], redo_contended)  # again: another sweep may share the folder
            if not needed:
                write(f"== {config.dataset} {config.run_name()}: already finished, skipped")
                skipped += 1
                continue
            write(
                f"== {config.dataset} {config.run_name()}"
                + (" (retraining: its record was timed on a shared CPU)" if old else "")
            )
            model, record = train(config, datasets[config.dataset], progress=progress, log=write)
            if old is not None:
                record["replaces"] = _superseded(old)
            path = save_run(model, record, runs_dir, config)
            trained += 1
            write(
                f"   test accuracy {record['test_accuracy']:.4f} (seed-style {record['seed_style_accuracy']:.4f}), "
                f"{record['train_seconds']:.0f} s training -> {path}"
            )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"trained": trained, "skipped": skipped}
