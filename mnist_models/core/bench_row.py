"""One benchmark row: what a timing measured (its identity) and what it found, in one type.

The bench suites write a row's identity and fields into pytest-benchmark's `extra_info` and `group`
(core.timing.describe: every suite, from its one BenchIdentity);
the benchmark report, compare, the regression gate, the baselines and the accuracy report read them
back with `BenchRow.from_json`, and nothing else reads `extra_info` or parses a benchmark's id.

The identity holds everything that changes the work: the suite, the net, every variant field, the
batch, the threads (per rank), the device, the ranks, and for epochs the dataset and its size. Two
rows of different identity are different benchmarks, whatever their names say: compare lists them
as not comparable, naming the fields that differ (a baseline's epochs on mnist-5k against a full
run's on fashion-mnist once read as a 17x regression).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..system.errors import MnistBenchError, UsageError
from .variants import Variant, render_tag

IDENTITY_FIELDS = (
    "suite",
    "model",
    "device",
    "compile",
    "precision",
    "channels_last",
    "fast",
    "batch",
    "threads",
    "ranks",
    "loader",
    "dataset",
    "dataset_size",
    "op",
)


# Suites whose timed work is all on the device when the device is CUDA (no loader, no host compute).
GPU_BOUND_SUITES = ("forward", "train-step", "ceiling")


@dataclass(frozen=True)
class BenchIdentity:
    """What a benchmark measured. `model` is None for the ceiling suite (torch's own ops, named by `op`)."""

    suite: str
    variant: Variant
    model: str | None = None
    batch: int | None = None
    threads: int | None = None  # torch intra-op threads, per rank
    ranks: int = 1
    loader: str | None = None  # epochs: the input pipeline
    dataset: str | None = None  # where the images come from (epochs: what the epoch trains on)
    dataset_size: int | None = None  # epochs: training images per epoch
    op: str | None = None  # ceiling: e.g. "matmul-n1024", "conv-b32"

    def to_info(self) -> dict:
        """The flat extra_info fields (one column each for a reader with pandas)."""
        return {
            "suite": self.suite,
            "model": self.model,
            **self.variant.fields(),
            "batch": self.batch,
            "threads": self.threads,
            "ranks": self.ranks,
            "loader": self.loader,
            "dataset": self.dataset,
            "dataset_size": self.dataset_size,
            "op": self.op,
        }

    @classmethod
    def from_info(cls, info: dict) -> BenchIdentity:
        """From extra_info; files written before the identity was explicit name the same facts otherwise
        (ranks as world_size, the epoch's size as train_images, a matmul's size as n)."""
        try:
            variant = Variant(
                info.get("device") or "cpu",
                info.get("compile") or "off",
                info.get("precision") or "fp32",
                bool(info.get("channels_last")),
                bool(info.get("fast")),
            )
        except MnistBenchError as exc:
            raise UsageError(f"benchmark with an unknown variant: {exc}") from None
        suite = str(info.get("suite") or "?")
        op = info.get("op")
        if suite == "ceiling" and "ranks" not in info:  # before the identity: op was matmul/conv, sizes apart
            size = f"-n{info['n']}" if info.get("n") else f"-b{info['batch']}" if info.get("batch") else ""
            op = f"{op or 'matmul'}{size}"
        return cls(
            suite=suite,
            variant=variant,
            model=info.get("model"),
            batch=_int(info.get("batch")),
            threads=_int(info.get("threads")) or _int(info.get("threads_per_rank")),
            ranks=_int(info.get("ranks")) or _int(info.get("world_size")) or 1,
            loader=info.get("loader") or None,
            dataset=info.get("dataset"),
            dataset_size=_int(info.get("dataset_size")) or (_int(info.get("train_images")) if suite == "epoch" else None),
            op=op,
        )

    def differences(self, other: BenchIdentity) -> list[str]:
        """The identity fields in which two rows differ, e.g. ['dataset', 'dataset_size']. On CUDA the
        host's thread count does not change the work of a forward, a train step or a ceiling op (the
        GPU runs it): two GPU machines with other core counts still compare there."""
        mine, theirs = self.to_info(), other.to_info()
        names = IDENTITY_FIELDS
        if self.variant.device == other.variant.device == "cuda" and self.suite == other.suite and self.suite in GPU_BOUND_SUITES:
            names = tuple(name for name in names if name != "threads")
        return [name for name in names if mine[name] != theirs[name]]

    @property
    def group(self) -> str:
        """The table a row sits in, where it is compared with its group's baseline: the suite, the net
        and the device (forward and train steps: the batch too); the ceiling's ops are one group."""
        if self.model is None:
            return self.suite
        batch = f"-b{self.batch}" if self.suite in ("forward", "train-step") else ""
        return f"{self.suite}-{self.model}-{self.variant.device}{batch}"

    def label(self, pinned_threads: bool = False) -> str:
        """A readable name rendered from the fields ('simple-tensor-cpu-eager-fp32-cl-b100'); the
        thread count is named where the case pinned it, the ranks where there are several."""
        if self.model is None:
            threads = f"-t{self.threads}" if pinned_threads and self.threads else ""
            return f"{self.variant.device}-{self.variant.precision}-{self.op}{threads}"
        return render_tag(
            model=self.model,
            loader=self.loader,
            **self.variant.fields(),
            threads=self.threads if pinned_threads else None,
            ranks=self.ranks if self.ranks > 1 else None,
            batch_size=self.batch,
        )


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


@dataclass(frozen=True)
class BenchRow:
    """One timed benchmark of a pytest-benchmark JSON: identity, timing statistics, and what the
    suite measured beside the time. `name` is pytest's (`test_forward[...]`), used to match a row
    with the same benchmark of another run; never parsed."""

    name: str
    identity: BenchIdentity
    median: float
    iqr: float
    rounds: int
    q1: float | None = None
    q3: float | None = None
    flops_per_call: float | None = None
    images_per_call: float | None = None
    compile_seconds: float | None = None
    test_accuracy: float | None = None
    mean_loss: float | None = None
    first_loss: float | None = None
    gflops_per_s: float | None = None  # set by the ceiling suite, which counts its own FLOPs
    bytes_per_call: float | None = None  # the ceiling suite's copies: bytes read + written per call
    speedup_vs_seed_process: float | None = None  # process suite: the seed pipeline's process / this one, paired
    speedup_low: float | None = None  # ... its interval (order statistics of the pairs' ratios)
    speedup_high: float | None = None
    speedup_pairs: float | None = None
    speedup_level: float | None = None  # ... that interval's exact level (absent before it was stored)
    threads_pinned: bool = False  # the case chose its thread count (else the session's)
    scaling: str | None = None  # scaling suite: baseline | plain | strong | weak
    per_rank_batch: int | None = None
    allreduce_share: float | None = None
    compute_s: float | None = None  # scaling: a step's split (medians) into a typical rank's compute,
    wait_s: float | None = None  # waiting for the slowest rank,
    comm_s: float | None = None  # and exposed communication
    straggler: int | None = None  # scaling: the rank whose compute is slower beyond noise
    straggler_ratio: float | None = None
    device_name: str | None = None

    @property
    def group(self) -> str:
        """Its identity's group (BenchIdentity.group); the group string a JSON stores is never read."""
        return self.identity.group

    @classmethod
    def from_json(cls, bench: object) -> BenchRow | None:
        """A row from one entry of a JSON's 'benchmarks' list, or None when it has no usable timing
        (no name, a median that is not a positive number): one odd entry never stops a report."""
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            return None
        stats, info = bench.get("stats"), bench.get("extra_info") or {}
        if not isinstance(stats, dict) or not isinstance(info, dict):
            return None
        median, iqr, rounds = (_number(stats.get(k)) for k in ("median", "iqr", "rounds"))
        if median is None or median <= 0 or iqr is None or rounds is None:
            return None
        try:
            identity = BenchIdentity.from_info(info)
        except UsageError:
            return None
        described = {f.name for f in fields(cls)} - {"name", "group", "identity", "median", "iqr", "rounds", "q1", "q3"}
        measured = {k: _number(info.get(k)) for k in described if k not in ("threads_pinned", "scaling", "device_name")}
        measured["per_rank_batch"] = _int(info.get("per_rank_batch"))
        measured["straggler"] = _int(info.get("straggler"))
        return cls(
            name=bench["name"],
            identity=identity,
            median=median,
            iqr=iqr,
            rounds=int(rounds),
            q1=_number(stats.get("q1")),
            q3=_number(stats.get("q3")),
            threads_pinned=bool(info.get("threads_pinned")),
            scaling=info.get("scaling") if isinstance(info.get("scaling"), str) else None,
            device_name=info.get("device_name") if isinstance(info.get("device_name"), str) else None,
            **measured,
        )

    # --- what a reader derives ---

    @property
    def suite(self) -> str:
        return self.identity.suite

    @property
    def variant(self) -> Variant:
        return self.identity.variant

    @property
    def label(self) -> str:
        return self.identity.label(self.threads_pinned)

    @property
    def is_baseline(self) -> bool:
        """Eager fp32 contiguous at the session's thread count (and, for epochs, the seed's DataLoader)."""
        return self.variant.is_plain and (self.identity.loader or "seed") == "seed" and not self.threads_pinned

    @property
    def achieved_gbytes(self) -> float | None:
        """A bandwidth row's rate, GB/s (bytes read + written per second)."""
        return self.bytes_per_call / self.median / 1e9 if self.bytes_per_call else None

    @property
    def achieved_gflops(self) -> float | None:
        if self.gflops_per_s is not None:
            return self.gflops_per_s
        return self.flops_per_call / self.median / 1e9 if self.flops_per_call else None

    @property
    def images_per_s(self) -> float | None:
        per_call = self.images_per_call or self.identity.batch
        return per_call / self.median if per_call else None

    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles; files without them get an IQR around the median, never below
        zero (a ratio divides by the lower quartile)."""
        if self.q1 is not None and self.q3 is not None and self.q1 > 0:
            return self.q1, self.q3
        half = self.iqr / 2
        return max(self.median - half, 1e-12), self.median + half


def bench_rows(data: dict) -> list[BenchRow]:
    """The rows of a pytest-benchmark JSON that carry timings; `skipped_rows` counts the others."""
    rows = (BenchRow.from_json(b) for b in data.get("benchmarks") or [])
    return [r for r in rows if r is not None]


def skipped_rows(data: dict) -> int:
    return len(data.get("benchmarks") or []) - len(bench_rows(data))
