"""`mnist-bench explain A B`: where in the train step B's time differs from A's, layer by layer.

Two sides (two commits, or two variant specs) run as A/B workers (runs/ab_worker.py); in alternating
rounds (core.interleave) each profiles a block of steps with torch.profiler and returns every op's
self time per step. The current checkout attributes those ops to the net's layers, forward and
backward, and to the optimizer, by the same matching as the roofline report (profiling/roofline.py:
a convolution by its shapes, pooling, ReLU, linear and dropout by the shapes their layer sees);
whatever no layer claims is "the rest of the step", and the wall time no op accounts for (Python
around the step, waits) is "outside every torch op". Per layer, each round gives one difference
B - A; the estimate is their median and its interval the order-statistic interval of the median at
the level it has (core/stats.py). A layer "accounts for" the slowdown when its interval excludes
zero. Ops (the kernels on a CPU) get the same treatment, and each layer names the roof it sits under
on each side (core/roofline.py), so that a slower layer can be read as compute- or memory-bound.

Profiling slows a step down (the profiler's own bookkeeping): the times here are for comparing the
two sides, not for quoting; `mnist-bench ab` times the step itself.
"""

from __future__ import annotations

import functools
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.interleave import alternate
from ..core.nets import build_model
from ..core.roofline import attainable, measure_roofs, step_work
from ..core.stats import format_level, median_interval
from ..core.variants import Variant, parse_tag
from ..system.machine import cache_capacity, native_bf16
from .profiler import _conv_flops_by_shape, _row_flops
from .roofline import _runs

BATCH = 100
DEFAULT_ROUNDS = 6
DEFAULT_STEPS = 5
REST = "rest of the step"
OUTSIDE = "outside every torch op"


@functools.lru_cache(maxsize=8)
def _step_of(model_name: str, precision: str, batch: int = BATCH) -> tuple[list, dict]:
    """A net's step as the roofline sees it (its layers' work, traced by one forward) and its conv shape
    table: the same for every round of a side, so built once."""
    model = build_model(model_name)
    return step_work(model, batch, precision), _conv_flops_by_shape(model, batch, "train")


def attribute(ops: list[dict], model_name: str, precision: str, batch: int = BATCH) -> tuple[dict[str, float], dict[str, float]]:
    """(ms per step per layer and phase, e.g. 'layer2.0 forward', plus REST; ms per step per op name)."""
    works, conv_flops = _step_of(model_name, precision, batch)
    rows = []
    for op in ops:
        row = {"name": op["name"], "input_shapes": op["input_shapes"], "self_ms_per_step": op["self_us"] / 1e3}
        if "conv" in op["name"].lower():
            _, layer = _row_flops(op["name"], op["input_shapes"], conv_flops)
            if layer:
                row["layer"] = layer
        rows.append(row)
    layers: dict[str, float] = {}
    claimed: set[int] = set()
    for work in works:
        hits = [i for i, r in enumerate(rows) if i not in claimed and _runs(work, r)]
        claimed.update(hits)
        key = f"{work.layer} {work.phase}"
        layers[key] = layers.get(key, 0.0) + sum(rows[i]["self_ms_per_step"] for i in hits)
    layers[REST] = sum(r["self_ms_per_step"] for i, r in enumerate(rows) if i not in claimed)
    by_op: dict[str, float] = defaultdict(float)
    for r in rows:
        by_op[r["name"]] += r["self_ms_per_step"]
    return layers, dict(by_op)


@dataclass
class Delta:
    """One layer's (or op's) B - A over the rounds, in ms per step."""

    name: str
    a_ms: float  # median over rounds
    b_ms: float
    estimate: float  # median of the rounds' differences
    low: float
    high: float
    level: float

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0

    def cells(self) -> str:
        return f"{self.estimate:+.3f} ({self.low:+.3f} to {self.high:+.3f})"


def deltas(rounds: list[tuple[dict[str, float], dict[str, float]]]) -> list[Delta]:
    """Per name, the median difference over rounds with its interval; largest slowdown first."""
    names = sorted({name for a, b in rounds for name in (*a, *b)})
    out = []
    for name in names:
        diffs = [b.get(name, 0.0) - a.get(name, 0.0) for a, b in rounds]
        low, high, level = median_interval(diffs)
        out.append(
            Delta(
                name,
                statistics.median(a.get(name, 0.0) for a, _ in rounds),
                statistics.median(b.get(name, 0.0) for _, b in rounds),
                statistics.median(diffs),
                low,
                high,
                level,
            )
        )
    return sorted(out, key=lambda d: -d.estimate)


@dataclass
class Explanation:
    a: str
    b: str
    model: str
    rounds: int
    steps: int
    layers: list[Delta] = field(default_factory=list)
    ops: list[Delta] = field(default_factory=list)
    step: Delta | None = None
    roofs: dict[str, dict[str, str]] = field(default_factory=dict)  # side -> layer -> roof

    def culprits(self) -> list[Delta]:
        """The layers slower beyond noise, largest first."""
        return [d for d in self.layers if d.beyond_noise and d.estimate > 0]

    def summary(self) -> str:
        step = f"the profiled step (wall): {self.step.cells()} ms" if self.step else ""
        slower = self.culprits()
        if not slower:
            return f"{step}; no layer is slower beyond noise"
        named = ", ".join(f"{d.name} {d.estimate:+.3f} ms" for d in slower[:3])
        return f"{step}; slower beyond noise: {named}"


def explain(
    profile_a: Callable[[], list[dict]],
    profile_b: Callable[[], list[dict]],
    a: str,
    b: str,
    model: str,
    precisions: tuple[str, str],
    rounds: int = DEFAULT_ROUNDS,
    steps: int = DEFAULT_STEPS,
) -> Explanation:
    """Profile both sides in alternating rounds and attribute the difference (the profilers are
    parameters: two workers' `profile`, or a test's tables: {"ops": [...], "wall_ms": ...} per block)."""
    pairs = alternate(profile_a, profile_b, rounds)
    layer_rounds, op_rounds, step_rounds = [], [], []
    for block_a, block_b in pairs:
        la, oa = attribute(block_a["ops"], model, precisions[0])
        lb, ob = attribute(block_b["ops"], model, precisions[1])
        for layers, block in ((la, block_a), (lb, block_b)):
            # what the wall clock saw that no op did: Python around the step, waits (a busy-wait plant lands here)
            layers[OUTSIDE] = max(0.0, block["wall_ms"] - sum(layers.values()))
        layer_rounds.append((la, lb))
        op_rounds.append((oa, ob))
        step_rounds.append(({"step": block_a["wall_ms"]}, {"step": block_b["wall_ms"]}))
    return Explanation(a, b, model, rounds, steps, deltas(layer_rounds), deltas(op_rounds), deltas(step_rounds)[0])


def layer_roofs(model: str, precision: str, threads: int) -> dict[str, str]:
    """Per layer and phase, the roof that bounds it on this machine at this precision ('compute', 'L2', ...)."""
    measured = measure_roofs(precision, cache_capacity(threads), threads, native_bf16())
    return {f"{w.layer} {w.phase}": attainable(w, measured.roofs).roof for w in _step_of(model, precision)[0]}


def render(result: Explanation, machine: str, command: str) -> str:
    level = format_level(result.layers[0].level) if result.layers else "?"
    out = [
        f"# Explain: {result.b} against {result.a}\n",
        f"\nGenerated by `{command}`; do not edit by hand. Machine: {machine}. The {result.model} train step at batch "
        f"{BATCH}, {result.rounds} alternating rounds of {result.steps} profiled steps per side. Times are ms per step under the "
        "profiler (it slows every op alike; compare, do not quote). Each difference is B - A, the median over rounds, with "
        f"the order-statistic interval of that median ({level}).\n",
        f"\n**{result.summary()}**\n",
        "\n## Layers (forward, backward, the optimizer step)\n\n",
        "| layer | A ms | B ms | B - A ms (interval) | beyond noise | roof A | roof B |\n|---|---:|---:|---|---|---|---|\n",
    ]
    for d in result.layers:
        roof_a = result.roofs.get("a", {}).get(d.name, "-")
        roof_b = result.roofs.get("b", {}).get(d.name, "-")
        out.append(
            f"| {d.name} | {d.a_ms:.3f} | {d.b_ms:.3f} | {d.cells()} | {'yes' if d.beyond_noise else 'no'} | {roof_a} | {roof_b} |\n"
        )
    out.append("\n## Ops (the kernels on a CPU), largest slowdown first\n\n")
    out.append("| op | A ms | B ms | B - A ms (interval) | beyond noise |\n|---|---:|---:|---|---|\n")
    for d in result.ops[:12]:
        out.append(f"| `{d.name}` | {d.a_ms:.3f} | {d.b_ms:.3f} | {d.cells()} | {'yes' if d.beyond_noise else 'no'} |\n")
    return "".join(out)


def run_explain(
    a: str,
    b: str,
    model: str,
    spec: str,
    rounds: int,
    steps: int,
    threads: int | None,
    repo: Path,
    log: Callable[[str], None] = print,
) -> tuple[Explanation, Path]:
    """Two variant specs (A and B parse as specs) or two commits of `repo` (each with `spec`)."""
    import contextlib

    import torch

    from ..runs.ab import Side, checkout_of, workers
    from ..system import atomic
    from ..system.errors import UsageError
    from ..system.machine import evidence_dir, machine_label, this_machine

    def as_spec(text: str) -> str | None:
        try:
            parse_tag(text, Variant.SWITCHES)
            return text
        except UsageError:
            return None

    variants = as_spec(a) is not None and as_spec(b) is not None
    with contextlib.ExitStack() as stack:
        if variants:
            sides = (Side(a, model, a, threads=threads), Side(b, model, b, threads=threads))
        else:
            sides = (
                Side(a, model, spec, stack.enter_context(checkout_of(a, repo)), threads),
                Side(b, model, spec, stack.enter_context(checkout_of(b, repo)), threads),
            )
        precisions = tuple(parse_tag(s.spec).get("precision", "fp32") for s in sides)
        log(f"explaining {sides[1].label} against {sides[0].label}: {rounds} rounds of {steps} profiled {model} steps")
        with workers(*sides) as (wa, wb):
            result = explain(lambda: wa.profile(steps), lambda: wb.profile(steps), a, b, model, precisions, rounds, steps)
    used = threads or torch.get_num_threads()
    roofs = {precision: layer_roofs(model, precision, used) for precision in set(precisions)}  # a few seconds each
    result.roofs = {"a": roofs[precisions[0]], "b": roofs[precisions[1]]}
    command = f"mnist-bench explain {a} {b} --model {model}" + ("" if variants else f" --a {spec}")
    text = render(result, machine_label(this_machine()), command)
    name = f"{a}..{b}-{model}".replace("/", "_")
    return result, atomic.write_text(evidence_dir() / "explain" / f"{name}.md", text)
