"""mnist-bench recipe-search: the recipe that brings a net to its target soonest on this machine.

Successive halving (Jamieson & Talwalkar, 2016) with seeds as the resource: every candidate recipe
trains to the target on the first seed; the faster half (at least one) goes on with the next seeds;
and so on until one candidate has run every seed or the time budget is spent. Every run is an
ordinary run to a target (`sweep --recipes ... --to-target`), serial or one Ray task per run, so its
record lands in the machine's runs folder beside the others and the time-to-accuracy report scores it
like any run. The result (candidates, seeds, times, the pick) is stored per machine in recipes.json;
`train --recipe best` reads it. The same candidates, seeds and variant give the same runs again: the
search is reproducible from what it stores (and a rerun skips every run that is already stored).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.recipes import Recipe
from ..system import atomic
from ..system.errors import UsageError
from ..system.machine import evidence_dir, machine_info, machine_key
from .config import TrainConfig
from .records import RunStore
from .sweep import run_sweep

# Candidates a user can start from: Adam at 1-2x the seed's rate, warmed up and annealed (cosine), on
# budgets of 4-6 epochs against the seed's 15, and one one-cycle at a larger batch. On a Zen 3 (AVX2,
# 2 threads) the first search (recipes.json there) found e6-b100-lr0.002-cosine reaching simple's 91% on
# fashion-mnist in 4-6 epochs, while one-cycle at batch 200 and 3-4x the rate never did within 3-5
# epochs, and a batch-200 epoch cost 1.3x a batch-100 one there (18.7 against 14.0 s: its activations
# leave the cache). Pass --recipes to search others.
DEFAULT_CANDIDATES = (
    "e6-b100-lr0.002-cosine",
    "e5-b100-lr0.002-cosine",
    "e4-b50-lr0.001-cosine",
    "e5-b200-lr0.003-onecycle",
)
DEFAULT_SEEDS = (777, 778, 779, 780, 781)
DEFAULT_BUDGET_S = 1200
DEFAULT_RECIPES_PATH = evidence_dir() / "recipes.json"
BEST = "best"


@dataclass
class Candidate:
    recipe: Recipe
    times: dict[int, float | None] = field(default_factory=dict)  # seed -> seconds to target (None: never reached)
    best_accuracy: dict[int, float] = field(default_factory=dict)  # seed -> the best evaluation of the run (0: diverged)

    @property
    def rank_key(self) -> tuple[float, float, int]:
        """Mean time over the seeds run, a failure as infinitely slow; among equals (failures) the one that came
        closest to the target; then the smaller budget."""
        values = [math.inf if t is None else t for t in self.times.values()]
        closest = statistics.fmean(self.best_accuracy.values()) if self.best_accuracy else 0.0
        return (statistics.fmean(values) if values else math.inf, -closest, self.recipe.epochs)

    def to_json(self) -> dict:
        return {
            "recipe": self.recipe.spec,
            "seconds_to_target": {str(s): t for s, t in self.times.items()},
            "best_accuracy": {str(s): a for s, a in self.best_accuracy.items()},
        }


def rounds(seeds: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The seeds each round adds: 1, then 2, then the rest (5 seeds: (777,), (778, 779), (780, 781))."""
    out, start, size = [], 0, 1
    while start < len(seeds):
        out.append(seeds[start : start + size])
        start += size
        size *= 2
    return out


def search(
    base: TrainConfig,
    candidates: list[Recipe],
    seeds: tuple[int, ...],
    runs_dir: Path,
    budget_s: float,
    train_round: Callable[[list[TrainConfig]], dict] | None = None,
    log=print,
) -> dict:
    """Run the halving search; returns what recipes.json stores for this dataset and net."""
    if not candidates:
        raise UsageError("recipe-search needs at least one candidate recipe")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UsageError("recipe-search needs distinct seeds")
    train_round = train_round or (lambda configs: _serial_round(configs, runs_dir, log))
    store = RunStore(runs_dir)
    alive = [Candidate(r) for r in dict.fromkeys(candidates)]
    started = time.perf_counter()
    spent_per_run: list[float] = []
    stopped_by_budget = False
    for i, new_seeds in enumerate(rounds(tuple(seeds))):
        if i:
            alive = sorted(alive, key=lambda c: c.rank_key)[: max(1, len(alive) // 2)]
        planned = {
            (c.recipe, seed): replace(base.with_recipe(c.recipe), seed=seed).to_target() for c in alive for seed in new_seeds
        }
        configs = list(planned.values())
        elapsed = time.perf_counter() - started
        estimate = len(configs) * (statistics.fmean(spent_per_run) if spent_per_run else 0.0)
        if i and elapsed + estimate > budget_s:
            log(f"budget: {elapsed:.0f} s spent, this round would take about {estimate:.0f} s more; stopping")
            stopped_by_budget = True
            break
        log(f"round {i + 1}: {len(alive)} recipe(s) x seeds {', '.join(map(str, new_seeds))}")
        round_start = time.perf_counter()
        result = train_round(configs)
        if result.get("failed"):
            log(f"{len(result['failed'])} run(s) failed in this round: {result['failed']}")
        trained = max(1, result.get("trained", 0))
        spent_per_run.append((time.perf_counter() - round_start) / trained)
        failed = {name for name, _ in result.get("failed", [])}
        for c in alive:  # read back from the records: a Ray round's runs were trained elsewhere
            for seed in new_seeds:
                config = planned[c.recipe, seed]
                key = result.get("keys", {}).get(config) or config.resolve()  # as the round placed it (Ray: its threads, device)
                found = store.find(key)
                if found.record is None and key.name not in failed:
                    raise UsageError(f"run {key.name} left no record; see the messages above")
                hit = found.record.time_to(config.target) if found.record else None  # diverged: never reached
                c.times[seed] = None if hit is None else hit[0]
                evaluated = [e.test_accuracy for e in found.record.epochs if e.test_accuracy is not None] if found.record else []
                c.best_accuracy[seed] = max(evaluated, default=0.0)
        for c in sorted(alive, key=lambda c: c.rank_key):
            times = ", ".join(f"never (best {c.best_accuracy[s]:.4f})" if t is None else f"{t:.1f}" for s, t in c.times.items())
            log(f"  {c.recipe.spec:28s} seconds to target: {times}")
    everyone = {c.recipe.spec: c for c in alive}
    best = min(alive, key=lambda c: c.rank_key)
    if not math.isfinite(best.rank_key[0]):  # every finalist missed the target on some seed
        log("no candidate reached the target on every seed it ran: nothing is picked (try longer budgets)")
    return {
        "best": best.recipe.spec if math.isfinite(best.rank_key[0]) else None,
        "variant": base.spec,
        "threads": base.threads,
        "target": base.to_target().target,
        "seeds": list(seeds),
        "candidates": [r.spec for r in candidates],
        "finalists": [c.to_json() for c in everyone.values()],
        "budget_s": budget_s,
        "seconds": time.perf_counter() - started,
        "stopped_by_budget": stopped_by_budget,
        "best_seeds_run": len(best.times),
        "closest": best.recipe.spec,
    }


def _serial_round(configs: list[TrainConfig], runs_dir: Path, log) -> dict:
    """One run after another (the data loaded once); a candidate whose training diverges (too high a
    rate) is a failure to reach the target, not the end of the search."""
    return run_sweep(configs, runs_dir, progress=False, log=log, divergence_fails_run=True)


def store_result(path: Path, dataset: str, model: str, result: dict) -> Path:
    """recipes.json: {dataset: {model: result}} for this machine; other nets' and datasets' results kept."""
    data = load_results(path) if path.exists() else {"machine": machine_info(), "results": {}}
    data["machine_key"] = machine_key(data["machine"])
    data.setdefault("results", {}).setdefault(dataset, {})[model] = result
    return atomic.write_json(path, data)


def load_results(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the recipe-search results {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UsageError(f"{path} is not a recipe-search result (no 'results')")
    return data


def best_recipe(dataset: str, model: str, path: Path | None = None) -> Recipe:
    """`train --recipe best`: the recipe recipe-search picked for this net and dataset on this machine."""
    path = path or DEFAULT_RECIPES_PATH
    if not path.exists():
        raise UsageError(f"no recipe-search result for this machine at {path}; run mnist-bench recipe-search first")
    data = load_results(path)
    if data.get("machine_key") != machine_key(machine_info()):
        raise UsageError(f"{path} was searched on {data.get('machine_key')}, not this machine; search here first")
    try:
        best = data["results"][dataset][model]["best"]
    except KeyError:
        raise UsageError(f"no recipe-search result for {model} on {dataset} in {path}; run mnist-bench recipe-search") from None
    if best is None:
        raise UsageError(f"the recipe search for {model} on {dataset} found no recipe that reached the target ({path})")
    return Recipe.parse(best)
