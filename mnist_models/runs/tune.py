"""`mnist-bench tune`: which variant trains fastest on this machine, measured here, in bounded time.

Two phases, both through the one harness and the one training loop:

1. the train step (batch 100, real digits) of every candidate: threads (all cores, one), memory
   format, the fast path, precision (bf16 only where the CPU has it natively: emulated bf16 is
   6-14x slower and is skipped, saying why), and torch.compile when asked for (it costs tens of
   seconds per compile and slowed the CPU train step on this project's machines);
2. a whole mnist-5k epoch (40 steps, the input pipeline included) for the fastest step variants
   through both loaders, the seed's DataLoader and the tensor loader.

The fastest epoch wins per net only beyond noise: in interleaved epoch pairs (core.interleave, 6
pairs, an interval of 96.9%) its ratio to a simpler runner-up must exclude 1 and pass this machine's
calibrated threshold (runs.ab.threshold_for, else 5%); within noise the simpler one is kept, and
tune says so. The speedup over the seed pipeline is measured the same way. Every candidate keeps the seed nets' accuracy: fp32 variants
compute the same function (the fast path is tested equal to the seed's layer order), and bf16
kept accuracy within the seed-to-seed spread in this project's sweeps. The result is stored per
machine (`reports/machines/<machine>/tune.json`) for `train --variant best` and `sweep --variants best`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..core import blocks
from ..core.data import load_dataset, make_loader
from ..core.harness import build, real_batch, warm_up
from ..core.interleave import paired
from ..core.stats import Ratio, format_level, median_ranks
from ..core.variants import Variant, render_tag
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import EMULATED_BF16_SLOWDOWN, evidence_dir, machine_info, native_bf16, set_threads
from ..system.paths import MACHINES_DIR
from .config import SEED, SPEC_FIELDS

DEFAULT_BUDGET_S = 180
DEFAULT_TUNE_DIR = MACHINES_DIR  # the result goes to <this>/<machine>/tune.json, beside the machine's other evidence
STEP_REPEATS = 10
EPOCH_FINALISTS = 3  # fastest step variants that go on to whole epochs
BATCH = 100


@dataclass(frozen=True)
class Candidate:
    """One way to train a net on this CPU: a variant, its thread count and its loader."""

    model: str
    threads: int
    variant: Variant = Variant("cpu")
    loader: str = "tensor"

    @property
    def spec(self) -> str:
        """The sweep spec of this choice, e.g. 'tensor-eager-bf16-cl-fast'."""
        return render_tag(**self.choice())

    def choice(self) -> dict:
        """What `train --variant` / `sweep --variants` set from this candidate: its loader and switches."""
        switches = self.variant.fields()
        return {name: self.loader if name == "loader" else switches[name] for name in SPEC_FIELDS}

    def to_json(self) -> dict:
        return {"model": self.model, "threads": self.threads, "loader": self.loader, "variant": self.variant.fields()}

    @classmethod
    def from_json(cls, data: dict) -> Candidate:
        if "variant" not in data:  # tune results written before the variant was one value: its fields were loose
            loose = {k: data[k] for k in Variant.SWITCHES if k in data}
            data = {k: data[k] for k in ("model", "threads", "loader") if k in data} | {"variant": loose}
        return cls(data["model"], data["threads"], Variant.from_json(data["variant"]), data.get("loader", "tensor"))

    @property
    def name(self) -> str:
        return f"{self.model}-{self.spec}-t{self.threads}"


def candidates(models: list[str], cores: int, with_compile: bool) -> tuple[list[Candidate], list[str]]:
    """The step grid, and one line per kind of candidate left out, with the reason."""
    skipped = []
    precisions = ["fp32"]
    if native_bf16():
        precisions.append("bf16")
    else:
        skipped.append(f"bf16: emulated on this CPU (no AVX-512 BF16 or AMX), {EMULATED_BF16_SLOWDOWN}")
    compiles = ["off"]
    if with_compile:
        compiles.append("default")
    else:
        skipped.append(
            "torch.compile: left out by default (tens of seconds per compile here, and it slowed the CPU train "
            "step on this project's machines: the benchmark report's compile rows); --with-compile includes it"
        )
    threads = sorted({cores, 1}, reverse=True)
    grid = [
        Candidate(m, t, Variant("cpu", c, p, cl, fast))
        for m, t, p, cl, fast, c in itertools.product(models, threads, precisions, (False, True), (False, True), compiles)
    ]
    return grid, skipped


def time_step(c: Candidate, dataset) -> float:
    """Seconds of one train step (batch 100, warmed up, compile outside the timing): a block's figure."""
    set_threads(c.threads)
    work = build(c.model, c.variant, "train", seed=SEED)
    call = work.call_on(*real_batch(dataset.train, BATCH, c.variant))
    warm_up(call)
    return blocks.time_block(call, STEP_REPEATS)


def time_epoch(c: Candidate, dataset) -> float:
    """Seconds of one whole epoch of `dataset` through the candidate's loader, after one warm-up epoch."""
    from .train import train_epoch

    set_threads(c.threads)
    work = build(c.model, c.variant, "train", seed=SEED)
    batches = make_loader(c.loader, dataset.train, BATCH, "cpu")
    train_epoch(work.step, batches, c.variant)  # warm-up: allocations, oneDNN's kernel choice, compile
    return train_epoch(work.step, batches, c.variant).seconds


@dataclass
class Tuning:
    steps: dict[str, float]  # candidate name -> seconds per step
    epochs: dict[str, float]  # candidate name -> seconds per epoch
    best: dict[str, Candidate]  # model -> the pick
    reference: dict[str, float]  # model -> seconds of an epoch of the seed's pipeline (DataLoader, eager fp32), same run
    skipped: list[str]
    unmeasured: list[str]  # candidates the budget left out
    seconds: float
    decisions: dict[str, str] = field(default_factory=dict)  # model -> how the pick was decided, one sentence
    speedups: dict[str, Ratio] = field(default_factory=dict)  # model -> seed pipeline epoch / pick's epoch, interleaved
    # Read from a tune.json written before intervals carried their level (every one was printed as "95%",
    # whatever its rounds): its intervals' levels are unknown, and tune.md says so.
    older: bool = False

    @classmethod
    def from_json(cls, data: dict) -> Tuning:
        """The result a saved tune.json holds (`save_tuning` wrote it), for re-rendering its tune.md."""
        speedups = data.get("speedup_over_seed_pipeline") or {}
        older = any("level" not in r for r in speedups.values())
        return cls(
            steps={name: ms / 1e3 for name, ms in data.get("step_ms", {}).items()},
            epochs=dict(data.get("epoch_s", {})),
            best={model: Candidate.from_json(c) for model, c in data["best"].items()},
            reference=dict(data.get("seed_pipeline_epoch_s", {})),
            skipped=list(data.get("skipped", [])),
            unmeasured=list(data.get("unmeasured", [])),
            seconds=float(data.get("seconds", 0.0)),
            decisions=dict(data.get("decisions", {})),
            speedups={
                model: Ratio(**{k: r[k] for k in ("estimate", "low", "high", "rounds", "level") if k in r})
                for model, r in speedups.items()
            },
            older=older,
        )

    def speedup_text(self, model: str) -> str | None:
        r = self.speedups.get(model)
        if r is None:
            return None
        if self.older:
            return f"{r.estimate:.3f}x ({r.low:.3f}-{r.high:.3f}, {r.rounds} rounds, level unknown)"
        return str(r)

    def decision_text(self, model: str) -> str:
        text = self.decisions.get(model, "by the fastest epoch")
        return text.replace("(95% interval ", "(level unknown: ") if self.older else text

    def epochs_of(self, model: str) -> list[tuple[str, float]]:
        """(candidate name, seconds) of one net's timed epochs, fastest first (Candidate.name starts with the net)."""
        return sorted(((n, t) for n, t in self.epochs.items() if n.startswith(f"{model}-")), key=lambda kv: kv[1])


DECIDING_PAIRS = 6  # interleaved epoch pairs behind each decision: the fewest whose interval reaches 95% (96.9%)
OLDER_NOTE = (
    'An older run: it printed every interval as "95%" whatever its rounds (a range of 3 rounds covers '
    f"{format_level(median_ranks(3)[1])}), and decided on 3 rounds; tune now decides on {DECIDING_PAIRS} interleaved "
    f"pairs, whose interval has {format_level(median_ranks(DECIDING_PAIRS)[1])}. Its levels are unknown."
)


def complexity(c: Candidate) -> int:
    """How many switches a candidate turns on: of two within noise, the one with fewer wins."""
    v = c.variant
    return (v.compile != "off") + (v.precision != "fp32") + v.channels_last + v.fast + (c.loader != "seed") + (c.threads == 1)


def interleaved(first: Candidate, second: Candidate, timer, dataset, pairs: int = DECIDING_PAIRS) -> Ratio:
    """second's epoch over first's, timed in alternating order (first second, second first, ...)."""
    return paired(lambda: timer(first, dataset), lambda: timer(second, dataset), pairs)


def noise_threshold(model: str) -> tuple[float, str]:
    """The difference below which two candidates tie: this machine's calibrated threshold for the net's
    train step, else the default."""
    from .ab import threshold_for

    return threshold_for(f"train-step {model} b100 eager-fp32")


def decide(fastest: Candidate, runner_up: Candidate | None, timer, dataset, threshold: float) -> tuple[Candidate, str]:
    """The fastest epoch only beyond noise: its interleaved ratio to the runner-up excludes 1 and passes
    `threshold`; within noise the simpler of the two."""
    if runner_up is None:
        return fastest, f"{fastest.spec}: the only candidate measured"
    ratio = interleaved(runner_up, fastest, timer, dataset)  # fastest / runner-up: below 1 is faster
    if ratio.faster_than(threshold):
        return fastest, f"{fastest.spec} beats {runner_up.spec} beyond noise: {ratio}, past the {100 * threshold:.1f}% threshold"
    simpler, other = (runner_up, fastest) if complexity(runner_up) < complexity(fastest) else (fastest, runner_up)
    return simpler, (
        f"{simpler.spec} and {other.spec} are within noise of each other ({ratio}; threshold {100 * threshold:.1f}%): "
        f"the simpler, {simpler.spec}, is kept"
    )


def tune(
    models: list[str],
    budget_s: float = DEFAULT_BUDGET_S,
    with_compile: bool = False,
    step_timer: Callable[[Candidate, object], float] = time_step,
    epoch_timer: Callable[[Candidate, object], float] = time_epoch,
    log=print,
) -> Tuning:
    """Measure the grid within `budget_s` (a measurement under way is finished; each net gets at least
    one step and one epoch timing) and pick the fastest epoch per net. The timers are parameters so
    that a test can give a timing table."""
    started = time.perf_counter()
    threads_before = torch.get_num_threads()  # the process's own count: the seed pipeline's reference runs with it
    dataset = load_dataset("mnist-5k")
    grid, skipped = candidates(models, threads_before, with_compile)
    steps, epochs, unmeasured = {}, {}, []

    def over_budget() -> bool:
        return time.perf_counter() - started > budget_s

    try:
        for c in grid:
            if over_budget() and any(name.startswith(f"{c.model}-") for name in steps):  # each net gets one at least
                unmeasured.append(c.name)
                continue
            steps[c.name] = step_timer(c, dataset)
            log(f"step  {c.name:45s} {1e3 * steps[c.name]:8.1f} ms")
        best, reference = {}, {}
        for model in models:
            seed_pipeline = Candidate(model, threads_before, loader="seed")
            reference[model] = epoch_timer(seed_pipeline, dataset)
            log(f"epoch {seed_pipeline.name:45s} {reference[model]:8.2f} s  (the seed's pipeline: the reference)")
            measured = sorted((c for c in grid if c.model == model and c.name in steps), key=lambda c: steps[c.name])
            finalists = [replace(c, loader=loader) for c in measured[:EPOCH_FINALISTS] for loader in ("tensor", "seed")]
            for c in finalists:
                if over_budget() and model in best:
                    unmeasured.append(f"{c.name} (epoch)")
                    continue
                epochs[c.name] = epoch_timer(c, dataset)
                log(f"epoch {c.name:45s} {epochs[c.name]:8.2f} s")
                if model not in best or epochs[c.name] < epochs[best[model].name]:
                    best[model] = c
        # The decisions rest on interleaved, repeated epochs, never on one timing each.
        decisions, speedups = {}, {}
        for model, fastest in best.items():
            ranked = sorted((c for c in finalists_of(model, best, epochs, grid)), key=lambda c: epochs[c.name])
            runner_up = next((c for c in ranked if c.name != fastest.name), None)
            threshold, source = noise_threshold(model)
            best[model], decisions[model] = decide(fastest, runner_up, epoch_timer, dataset, threshold)
            decisions[model] += f" (threshold from {source})"  # the command prints the decision once, in its summary
            seed_pipeline = Candidate(model, threads_before, loader="seed")
            speedups[model] = interleaved(best[model], seed_pipeline, epoch_timer, dataset)  # seed / pick
            log(f"{model}: the seed pipeline's epoch over the pick's: {speedups[model]}")
    finally:
        set_threads(threads_before)
    if not best:
        raise UsageError(f"a budget of {budget_s:g} s measured nothing; give tune more time (--budget)")
    return Tuning(steps, epochs, best, reference, skipped, unmeasured, time.perf_counter() - started, decisions, speedups)


def finalists_of(model: str, best: dict, epochs: dict, grid: list[Candidate]) -> list[Candidate]:
    """The candidates of a net whose epoch was timed."""
    out = []
    for c in grid:
        for loader in ("tensor", "seed"):
            timed = replace(c, loader=loader)
            if c.model == model and timed.name in epochs:
                out.append(timed)
    return out


def tune_path(tune_dir: Path | None = None, machine: dict | None = None) -> Path:
    """A machine's tune result (this machine's by default), in its evidence folder under `tune_dir`."""
    return evidence_dir(machine, Path(tune_dir or DEFAULT_TUNE_DIR)) / "tune.json"


def save_tuning(result: Tuning, tune_dir: Path | None = None) -> Path:
    machine = machine_info()
    data = {
        "kind": "mnist-bench tune",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "seconds": result.seconds,
        "best": {model: c.to_json() for model, c in result.best.items()},
        "step_ms": {name: 1e3 * s for name, s in sorted(result.steps.items(), key=lambda kv: kv[1])},
        "epoch_s": dict(sorted(result.epochs.items(), key=lambda kv: kv[1])),
        "seed_pipeline_epoch_s": result.reference,
        "decisions": result.decisions,
        "speedup_over_seed_pipeline": {model: r.to_json() for model, r in result.speedups.items()},
        "skipped": result.skipped,
        "unmeasured": result.unmeasured,
    }
    path = atomic.write_json(tune_path(tune_dir, machine), data)
    atomic.write_text(path.with_suffix(".md"), render_tuning(result, machine))
    return path


def render_tuning(result: Tuning, machine: dict, rendered_by: str | None = None) -> str:
    """tune.md beside tune.json: per net the pick, how it was decided, its interleaved speedup over the
    seed pipeline, then every epoch and step timing. `rendered_by`: the code of `mnist-bench report`
    when it re-renders a saved result (rerender_saved)."""
    from ..system.machine import machine_label

    again = f"; re-rendered by `mnist-bench report` at code {rendered_by}" if rendered_by else ""
    out = [
        "# Tune: the fastest way to train each net on this machine\n",
        f"\nGenerated by `mnist-bench tune`{again}; do not edit by hand. Machine: {machine_label(machine)}; "
        f"measured by code {machine.get('code')}.\n",
    ]
    if result.older:
        out.append(f"\n{OLDER_NOTE}\n")
    for model, best in result.best.items():
        speedup = result.speedup_text(model)
        out.append(f"\n## {model}: `{best.spec}`, {best.threads} thread(s)\n\n")
        out.append(f"- **Speedup over the seed pipeline's epoch** (mnist-5k, interleaved pairs): {speedup}\n" if speedup else "")
        out.append(f"- **Decided**: {result.decision_text(model)}\n")
        out.append("\n| epoch (one timing each) | seconds |\n|---|---:|\n")
        for name, seconds in result.epochs_of(model):
            out.append(f"| `{name}` | {seconds:.2f} |\n")
        out.append(f"| the seed pipeline | {result.reference[model]:.2f} |\n")
    if result.skipped:
        out.append("\n## Left out\n\n" + "".join(f"- {line}\n" for line in result.skipped))
    return "".join(out)


def rerender_saved(path: Path, code: str) -> Path:
    """tune.md re-rendered beside a saved tune.json (any machine's), by this version's words."""
    import json

    data = json.loads(path.read_text())
    return atomic.write_text(path.with_suffix(".md"), render_tuning(Tuning.from_json(data), data["machine"], code))


def load_best(model: str, tune_dir: Path | None = None) -> Candidate:
    """This machine's tuned choice for `model`; a one-line error when there is none."""
    import json

    path = tune_path(tune_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no tuned variant for this machine ({path.name}): run mnist-bench tune first") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a tune result ({exc}); run mnist-bench tune again") from None
    best = data.get("best") if isinstance(data, dict) else None
    if not isinstance(best, dict):
        raise UsageError(f"{path} is not a tune result (no 'best' table); run mnist-bench tune again")
    if model not in best:
        raise UsageError(f"{path} has no tuned variant for the {model} net: run mnist-bench tune --models {model}")
    try:  # a pick that is there but malformed is a broken file, not a missing pick
        return Candidate.from_json(best[model])
    except (KeyError, ValueError, TypeError, UsageError) as exc:
        raise UsageError(
            f"{path}: the {model} net's pick cannot be read ({type(exc).__name__}: {exc}); run mnist-bench tune again"
        ) from None


def best_choice(model: str, tune_dir: Path | None = None) -> dict:
    """The tuned choice as a variant spec's choice (TrainConfig.with_choice): its switches, loader and threads."""
    best = load_best(model, tune_dir)
    return {**best.choice(), "threads": best.threads}
