"""Run records: the one typed, versioned document a training run leaves, and the folder that holds them.

`RunRecord` is written and read only here. Its JSON carries `schema` (SCHEMA_VERSION); records
written before versioning (schema 1: no `schema` key) migrate on load. Every load validates the
whole record once: a record that is not valid JSON, or not the shape of a run record, raises
RecordError naming the file, and reports skip and name it instead of crashing on it.

`RunStore` is a runs folder (`<runs>/<dataset>/<run name>.json`, weights in `weights/`):

- a run's identity is its whole recipe (config.RunKey), found by the stored config, not the file name;
- a finished record is kept unless replacing it is asked for (RunExists otherwise);
- record and weights are written all or nothing: both are staged first, weights move in before
  the record, and the record's presence is what marks a run finished;
- a sweep claims a run (an O_EXCL claim file holding its pid) before training it, so two sweeps on
  one folder split the work; claims, temp files and weights left by a killed process are cleaned.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ..core.data import DATASETS
from ..core.nets import MODELS, build_model
from ..core.variants import Variant
from ..system import atomic
from ..system.errors import CheckpointError, MnistBenchError, RecordError, RunExists, UsageError, WriteError
from ..system.machine import BUSY_CORES, evidence_dir, machine_key
from ..system.paths import shown
from .config import RunKey, TrainConfig

SCHEMA_VERSION = 5
KIND = "mnist-bench train run"
DEFAULT_RUNS_DIR = evidence_dir() / "runs"  # this machine's records; another machine's live beside them
BAD_SUFFIX = ".bad"  # a record that does not load is kept aside under this suffix, never deleted


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    cost: float  # mean batch loss, the seed's printed figure
    seconds: float  # training only: the evaluation after the epoch is not in it
    steps: int
    test_accuracy: float | None = None
    eval_seconds: float | None = None  # the test-set evaluation after this epoch (schema 5)
    # From the start of training (data loaded, net built) to the end of this epoch's evaluation:
    # time to accuracy is this figure at the first epoch that reaches the target (schema 5).
    elapsed_seconds: float | None = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str
    train: int
    test: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int
    flops_per_image: int


@dataclass
class RunRecord:
    config: TrainConfig
    key: RunKey  # the identity the run resolved when it started: device, threads and the whole recipe
    dataset: DatasetInfo
    model: ModelInfo
    epochs: list[EpochStats]
    test_accuracy: float
    seed_style_accuracy: float
    train_seconds: float
    wall_seconds: float  # includes the per-epoch evaluations
    train_images_per_second: float
    device_name: str
    machine: dict  # machine.machine_info(): CPU, ISA, versions, code commit
    busy_before_start: dict  # machine.busy_check() over the run's set-up, before the epochs
    cores_used_by_others_during_run: float | None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    inference_ms: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    peak_memory_kind: str = ""
    weights: str | None = None
    replaces: dict | None = None  # what a retrained run keeps of the record it replaced
    distributed: dict | None = None  # a DDP job: world size, nodes, backend, per-rank batch, threads per rank
    setup_seconds: float | None = None  # loading the data and building the net, before training starts (schema 5)
    schema: int = SCHEMA_VERSION

    # --- what readers ask of a record -------------------------------------------------------

    @property
    def variant(self) -> Variant:
        return self.key.variant

    @property
    def device(self) -> str:
        return self.key.variant.device

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def threads(self) -> int:
        """The torch threads the run used (the config may have left the choice to torch)."""
        return self.key.threads

    @property
    def contended(self) -> bool:
        """Did another process share the CPU, before or during the run? Its times are then upper bounds."""
        busy_before = bool(self.busy_before_start.get("busy"))
        oversubscribed = bool((self.distributed or {}).get("oversubscribed"))  # more ranks x threads than cores
        return busy_before or oversubscribed or (self.cores_used_by_others_during_run or 0) > BUSY_CORES

    @property
    def machine_key(self) -> str:
        return machine_key(self.machine)

    @property
    def timed_to_accuracy(self) -> bool:
        """Does the record say when each evaluation ended (schema 5 on)? Earlier runs cannot give a time to accuracy."""
        return all(e.elapsed_seconds is not None for e in self.epochs if e.test_accuracy is not None)

    def time_to(self, accuracy: float) -> tuple[float, int] | None:
        """(seconds from the start of training to the end of the first evaluation at or above
        `accuracy`, that epoch), or None when no evaluation reached it."""
        for e in self.epochs:
            if e.test_accuracy is not None and e.test_accuracy >= accuracy and e.elapsed_seconds is not None:
                return e.elapsed_seconds, e.epoch
        return None

    def superseded(self) -> dict:
        """What a retrained run keeps of this record: enough to see whether the seed reproduced its
        accuracy and how much the contention had cost."""
        return {
            "busy_before_start": self.busy_before_start.get("busy"),
            "test_accuracy": self.test_accuracy,
            "seed_style_accuracy": self.seed_style_accuracy,
            "train_seconds": self.train_seconds,
            "cores_used_by_others_during_run": self.cores_used_by_others_during_run,
            "created": self.created,
            "machine": {k: self.machine.get(k) for k in ("cpu", "cpu_isa", "torch_threads", "code")},
        }

    # --- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict:
        data = {"kind": KIND, "schema": self.schema, "name": self.name}
        for f in fields(self):
            if f.name != "schema":
                value = getattr(self, f.name)
                data[f.name] = asdict(value) if f.name in ("config", "key", "dataset", "model") else value
        data["epochs"] = [asdict(e) for e in self.epochs]
        # Derived, for people reading the file; ignored on load.
        data["variant"] = self.variant.fields() | {"tag": self.variant.tag, "loader": self.config.loader}
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "record") -> RunRecord:
        """Migrate and validate; any defect is a RecordError naming `source` and the first problem."""
        try:
            if not isinstance(data, dict) or data.get("kind") != KIND:
                raise ValueError(f"not an {KIND!r} document")
            data = migrate(dict(data))
            record = cls(
                config=_config(data["config"]),
                key=RunKey.from_json(data["key"]),
                dataset=DatasetInfo(**_only(data["dataset"], DatasetInfo)),
                model=ModelInfo(**_only(data["model"], ModelInfo)),
                epochs=[EpochStats(**_only(e, EpochStats)) for e in _list(data["epochs"], "epochs")],
                **{
                    f.name: data[f.name]
                    for f in fields(cls)
                    if f.name not in ("config", "key", "dataset", "model", "epochs") and f.name in data
                },
            )
            record._validate()
        except MnistBenchError as exc:
            raise RecordError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RecordError(f"{source}: {what}") from None
        return record

    def _check_key(self) -> None:
        """The stored key must be what the stored config resolves to (device and threads aside, which
        the config may leave to the machine)."""
        key, config = self.key, self.config
        same = {
            name: getattr(key, name) == getattr(config, name)
            for name in ("dataset", "model", "loader", "ranks", "epochs", "batch_size", "lr", "seed", "schedule", "target")
        }
        same["variant"] = replace(config.variant, device=key.variant.device) == key.variant and config.variant.device in (
            "auto",
            key.variant.device,
        )
        same["threads"] = config.threads in (None, key.threads)
        wrong = [name for name, ok in same.items() if not ok]
        if wrong:
            raise ValueError(f"the run key disagrees with the config in: {', '.join(wrong)}")

    def _validate(self) -> None:
        _choice(self.dataset.name, DATASETS, "dataset")
        _choice(self.model.name, MODELS, "model")
        if self.dataset.name != self.config.dataset or self.model.name != self.config.model:
            raise ValueError("dataset or model disagrees with the config")
        self._check_key()
        if not self.epochs:
            raise ValueError("no epochs")
        for e in self.epochs:
            _number(e.cost, "epoch cost")
            _number(e.seconds, "epoch seconds", low=0)
            if e.test_accuracy is not None:
                _number(e.test_accuracy, "epoch test accuracy", 0, 1)
            for name in ("eval_seconds", "elapsed_seconds"):
                if getattr(e, name) is not None:
                    _number(getattr(e, name), f"epoch {name.replace('_', ' ')}", low=0)
        for name in ("test_accuracy", "seed_style_accuracy"):
            _number(getattr(self, name), name.replace("_", " "), 0, 1)
        for name in ("train_seconds", "wall_seconds", "train_images_per_second"):
            _number(getattr(self, name), name.replace("_", " "), low=0)
        for name in ("params", "flops_per_image"):
            _number(getattr(self.model, name), name, low=1)
        for name in ("train", "test"):
            _number(getattr(self.dataset, name), f"{name} images", low=1)
        for what, value in (
            ("machine", self.machine),
            ("busy_before_start", self.busy_before_start),
            ("inference_ms", self.inference_ms),
        ):
            if not isinstance(value, dict):
                raise ValueError(f"{what} must be an object")
        for what in ("replaces", "distributed"):
            if getattr(self, what) is not None and not isinstance(getattr(self, what), dict):
                raise ValueError(f"{what} must be an object")


def migrate(data: dict) -> dict:
    """Bring a record of any earlier schema to SCHEMA_VERSION."""
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ValueError(f"schema {schema!r} is newer than this code reads ({SCHEMA_VERSION}); upgrade mnist-cnn-bench")
    if schema == 1:
        # Unversioned records: the resolved device lived in "variant"; later fields may be absent.
        data["device"] = data.get("variant", {}).get("device", "cpu")
        data.setdefault("cores_used_by_others_during_run", None)
        data.setdefault("busy_before_start", {})
        data["schema"] = schema = 2
    if schema == 2:
        data.setdefault("distributed", None)  # DDP runs came with schema 3
        data["schema"] = schema = 3
    if schema == 3:
        # The five variant fields were loose in the config; the resolved device and threads were read
        # back from "device" and the machine block. Schema 4 stores them once, in "key".
        config = dict(data["config"])
        variant = {name: config.pop(name) for name in ("device", "compile", "precision", "channels_last") if name in config}
        variant["fast"] = config.pop("fast", False)  # fast arrived later: a record without it was not fast
        config["variant"] = variant
        data["config"] = config
        threads = data.get("busy_before_start", {}).get("torch_threads") or data.get("machine", {}).get("torch_threads")
        key = {name: config.get(name) for name in ("dataset", "model", "loader", "ranks", "epochs", "batch_size", "lr", "seed")}
        key["ranks"] = key["ranks"] or 1  # DDP came with schema 3; a record without ranks ran one process
        data["key"] = key | {"variant": variant | {"device": data.pop("device")}, "threads": threads or config.get("threads")}
        data["schema"] = schema = 4
    if schema == 4:
        # Schema 5: the recipe's schedule and a time-to-accuracy target in the key; every earlier run
        # had the seed's constant rate and ran its whole budget.
        data["key"] = {"schedule": "const", "target": None} | dict(data["key"])
        data["schema"] = 5
    return data


_IDENTITY_FIELDS = ("model", "dataset", "epochs", "batch_size", "lr", "seed", "variant", "loader", "threads")


def _config(data: object) -> TrainConfig:
    if not isinstance(data, dict):
        raise ValueError("config must be an object")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))}")
    # What identifies a run must be stored; a default would silently turn it into another run.
    missing = [f for f in _IDENTITY_FIELDS if f not in data]
    if missing:
        raise ValueError(f"missing config field(s) {', '.join(missing)}")
    return TrainConfig.from_json(data)  # validates every name and number


def _only(data: object, cls) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be an object")
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


def _list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _choice(value, choices, what: str):
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}")
    return value


def _number(value, what: str, low: float | None = None, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{what} {value} is out of range")


def load_record(path: Path) -> RunRecord:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecordError(f"no run record at {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise RecordError(f"{path}: not readable JSON ({exc})") from None
    return RunRecord.from_json(data, str(path))


# --- weights ---------------------------------------------------------------------------------


def weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as plain CPU tensors: loadable with torch.load(..., weights_only=True)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def checked_state(model_name: str, state: dict) -> dict:
    """A state_dict that came from elsewhere (a Ray worker), checked to load into `model_name` before it is written."""
    try:
        build_model(model_name).load_state_dict(state)
    except Exception as exc:  # missing/unexpected keys, shape mismatch, not a dict of tensors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the weights sent back for a {model_name} run do not fit the net: {first}") from None
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


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


# --- the runs folder -------------------------------------------------------------------------


@dataclass
class Found:
    """What a runs folder holds for one run key: a finished record, or a file that did not load."""

    record: RunRecord | None = None
    path: Path | None = None
    problem: str | None = None


class RunStore:
    def __init__(self, root: Path | str = DEFAULT_RUNS_DIR) -> None:
        self.root = Path(root)
        self._made: list[Path] = []  # folders this store created, removed again if they stay empty
        # path -> ((mtime_ns, size), record or error): a sweep's planning looks at every record once per
        # run it plans; each file is parsed again only when it changed (another sweep may write it).
        self._loaded: dict[Path, tuple[tuple[int, int], RunRecord | RecordError]] = {}

    def _load(self, path: Path) -> RunRecord:
        try:
            st = path.stat()
        except OSError:
            return load_record(path)  # gone meanwhile: load_record says so
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._loaded.get(path)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, load_record(path))
            except RecordError as exc:
                cached = (stamp, exc)
            self._loaded[path] = cached
        if isinstance(cached[1], RecordError):
            raise cached[1]
        return cached[1]

    def _mkdir(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._made += missing  # deepest first

    def prune_empty(self) -> None:
        """Remove the folders this store made that are still empty (a run that failed leaves none)."""
        for folder in self._made:
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()
        self._made = []

    def folder(self, dataset: str) -> Path:
        if dataset not in DATASETS:  # folder names are built only from validated parts
            raise UsageError(f"unknown dataset {dataset!r}")
        return self.root / dataset

    def record_path(self, key: RunKey) -> Path:
        return self.folder(key.dataset) / f"{key.name}.json"

    @staticmethod
    def weights_path(record_path: Path) -> Path:
        return record_path.parent / "weights" / f"{record_path.stem}.pt"

    # --- reading ---

    def _record_files(self, dataset: str | None = None) -> list[Path]:
        folders = [self.folder(dataset)] if dataset else [self.root / d for d in DATASETS]
        return sorted(p for f in folders if f.is_dir() for p in f.glob("*.json"))

    def load_all(self) -> tuple[list[RunRecord], list[str]]:
        """Every valid record under the folder, and one line for each file that is not one."""
        if not self.root.is_dir():
            raise UsageError(f"no runs directory at {self.root}; train or sweep first (mnist-bench sweep --help)")
        records, problems = [], []
        for path in self._record_files():
            try:
                records.append(load_record(path))
            except RecordError as exc:
                problems.append(f"skipped run record {exc}")
        return records, problems

    def find(self, key: RunKey) -> Found:
        """The record of this run key: by its canonical name first, then any record with that recipe
        (records written before names carried the whole recipe have shorter names)."""
        canonical = self.record_path(key)
        if canonical.exists():
            try:
                return Found(self._load(canonical), canonical)
            except RecordError as exc:
                return Found(None, canonical, str(exc))
        for path in self._record_files(key.dataset):
            try:
                record = self._load(path)
            except RecordError:
                continue  # another run's problem: `load_all` names it
            if record.key == key:
                return Found(record, path)
        return Found()

    # --- writing ---

    def save(self, record: RunRecord, model: nn.Module | dict, path: Path | None = None, overwrite: bool = False) -> Path:
        """Write weights (a net, or its state_dict as a Ray worker sends it back) and record, all or nothing;
        an existing record is replaced only with overwrite."""
        path = path or self.record_path(record.key)
        if path.exists() and not overwrite:
            raise RunExists(f"a finished run is already stored at {path}; it is kept (pass --overwrite to replace it)")
        weights = self.weights_path(path)
        record.weights = shown(weights)  # relative to the home when inside it: records stay valid in a moved checkout
        state = weights_state(model) if isinstance(model, nn.Module) else checked_state(record.model.name, model)
        staged_weights = atomic.stage(weights, atomic.torch_writer(state), "wb")
        try:
            staged_record = atomic.stage(path, lambda fh: fh.write(atomic.json_text(record.to_json())))
        except BaseException:
            staged_weights.unlink(missing_ok=True)
            raise
        atomic.commit(staged_weights, weights)
        atomic.commit(staged_record, path)  # last: its presence marks the run finished
        return path

    def set_aside(self, path: Path) -> Path:
        """Keep a record that does not load (and its weights) under a .bad name; returns the new name."""
        aside = path.with_name(path.name + BAD_SUFFIX)
        os.replace(path, aside)
        weights = self.weights_path(path)
        if weights.exists():
            os.replace(weights, weights.with_name(weights.name + BAD_SUFFIX))
        return aside

    # --- claims: two sweeps on one folder split the work ---

    def _claim_path(self, key: RunKey) -> Path:
        return self.folder(key.dataset) / f".{key.name}.claim"

    def claim(self, key: RunKey) -> bool:
        """Atomically take the right to train this run; False when a live process holds it."""
        path = self._claim_path(key)
        try:
            self._mkdir(path.parent)
        except OSError as exc:
            raise WriteError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": atomic.process_start(os.getpid())})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._claim_alive(path):
                    return False
                path.unlink(missing_ok=True)  # its holder was killed: take it over
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            return True
        return False

    @staticmethod
    def _claim_alive(path: Path) -> bool:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # half-written by a killed claimer
        if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
            return True  # another machine's claim (a shared folder): never steal it
        # the pid alone could be another process's now (a claim of a killed sweep, its pid reused): the start time tells
        return isinstance(holder.get("pid"), int) and atomic.same_process_alive(holder["pid"], holder.get("started"))

    def claim_holder(self, key: RunKey) -> str:
        """Who holds a run's claim, for a message: 'pid 123 on host'."""
        try:
            holder = json.loads(self._claim_path(key).read_text())
            return f"pid {holder.get('pid')} on {holder.get('host')}"
        except (OSError, ValueError, AttributeError):
            return "another process"

    def release(self, key: RunKey) -> None:
        self._claim_path(key).unlink(missing_ok=True)

    def clean_leftovers(self, dataset: str) -> list[str]:
        """Remove what killed writers left: stale temp files, dead claims, and weights whose record
        never landed (an unfinished run). Returns one line per removed file."""
        folder = self.folder(dataset)
        removed = []
        for stale in atomic.stale_temp_files(folder) + atomic.stale_temp_files(folder / "weights"):
            stale.unlink(missing_ok=True)
            removed.append(f"removed a temporary file left by a killed write: {stale}")
        live = set()
        for claim in folder.glob(".*.claim") if folder.is_dir() else []:
            if self._claim_alive(claim):
                live.add(claim.name[1 : -len(".claim")])
            else:
                claim.unlink(missing_ok=True)
        weights_dir = folder / "weights"
        for weights in weights_dir.glob("*.pt") if weights_dir.is_dir() else []:
            if weights.stem not in live and not (folder / f"{weights.stem}.json").exists():
                weights.unlink(missing_ok=True)
                removed.append(f"removed weights of an unfinished run (no record): {weights}")
        return removed
