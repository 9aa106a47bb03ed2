"""Time to accuracy (issue 26): recipes as variants, runs to a target, MLPerf scoring, the report, the search."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from mnist_models.cli import main
from mnist_models.core import targets
from mnist_models.core.harness import build, real_batch
from mnist_models.core.recipes import SEED_RECIPE, Recipe, lr_factor, scheduler
from mnist_models.core.stats import olympic_mean, permutation_p, ratio_interval
from mnist_models.core.variants import Variant, parse_tag
from mnist_models.reporting import tta
from mnist_models.runs import recipe_search
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunRecord, RunStore
from mnist_models.runs.train import train, train_epoch
from mnist_models.system.errors import UsageError
from mnist_models.system.machine import set_threads

REPO = Path(__file__).resolve().parents[1]
# device cpu, named: the run names below say -cpu-, also on a machine with a GPU (where auto would pick cuda)
QUICK = dict(dataset="mnist-5k", loader="tensor", measure_latency=False, threads=1, variant=Variant("cpu"))


def quiet(line):
    pass


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Runs here use 1 thread (set process-wide by the loop): give the next test torch's count back."""
    threads = torch.get_num_threads()
    yield
    set_threads(threads)


# --- the recipe as a variant -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["e3-b200-lr0.004-onecycle", "e15-b100-lr0.001-const", "e2-b500-lr0.0008-cosine"])
def test_a_recipe_spec_round_trips(spec):
    recipe = Recipe.parse(spec)
    assert recipe.spec == spec
    assert Recipe.parse(recipe.spec) == recipe


def test_tokens_left_out_keep_the_seeds_values_and_seed_names_the_seed_recipe():
    assert Recipe.parse("seed") == SEED_RECIPE and SEED_RECIPE.spec == "e15-b100-lr0.001-const"
    assert Recipe.parse("onecycle-lr0.004") == Recipe(15, 100, 0.004, "onecycle")
    assert Recipe.parse("b200-e3") == Recipe(3, 200, 0.001, "const")  # any order


@pytest.mark.parametrize(
    "spec, message",
    [("e3-sgd", "unknown token 'sgd'"), ("e3-e4", "names the epochs twice"), ("eager-e3", "unknown token 'eager'")],
)
def test_a_bad_recipe_spec_is_one_usage_error(spec, message):
    with pytest.raises(UsageError, match=message):
        Recipe.parse(spec)


def test_the_recipe_and_target_show_in_the_run_name_and_parse_back():
    config = TrainConfig(model="simple", **QUICK).with_recipe(Recipe.parse("e3-b200-lr0.004-onecycle")).to_target()
    key = config.resolve()
    assert key.name == "simple-tensor-cpu-eager-fp32-t1-e3-b200-lr0.004-onecycle-to95-s777"
    fields = parse_tag(key.name)
    assert (fields["epochs"], fields["batch_size"], fields["lr"], fields["schedule"], fields["target"]) == (
        3,
        200,
        0.004,
        "onecycle",
        0.95,
    )
    assert key.recipe == config.recipe and key.spec == "tensor-eager-fp32"
    # the seed's recipe and no target leave the name as it was before recipes were variants
    assert TrainConfig(model="simple", **QUICK).resolve().name == "simple-tensor-cpu-eager-fp32-t1-s777"


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_warm_up_peak_at_the_rate_and_anneal(schedule):
    factor = lr_factor(schedule, 100)
    values = [factor(step) for step in range(100)]
    assert values[0] < 0.25  # warm-up starts low
    assert max(values) == pytest.approx(1.0, abs=0.03)  # the recipe's lr is the peak
    assert values[-1] < 0.01  # and ends near zero
    peak = values.index(max(values))
    assert all(a <= b + 1e-12 for a, b in zip(values[:peak], values[1 : peak + 1]))  # rises, then
    assert all(a >= b - 1e-12 for a, b in zip(values[peak:], values[peak + 1 :]))  # only falls
    assert lr_factor("const", 100) is None


def test_the_schedule_moves_the_optimizers_rate_every_step(small5k):
    work = build("simple", Variant("cpu"), "train", lr=0.004)
    x, y = real_batch(small5k.train, 20, work.variant)
    rates = []

    def record_rate(steps, total):
        rates.append(work.optimizer.param_groups[0]["lr"])

    train_epoch(work.step, [(x, y)] * 8, work.variant, record_rate, scheduler(work.optimizer, "onecycle", total_steps=8))
    assert rates[1] > rates[0] and rates[-1] < rates[2]  # up during warm-up, down after
    constant = build("simple", Variant("cpu"), "train", lr=0.004)
    assert scheduler(constant.optimizer, "const", total_steps=8) is None
    train_epoch(constant.step, [(x, y)], constant.variant)
    assert constant.optimizer.param_groups[0]["lr"] == 0.004


# --- a run to a target ---------------------------------------------------------------------------


def test_a_run_to_a_target_stops_at_the_first_evaluation_that_reaches_it(mnist5k):
    config = dataclasses.replace(TrainConfig(model="simple", epochs=5, **QUICK), target=0.5)
    _, record = train(config, mnist5k, log=quiet)
    assert len(record.epochs) == 1 and record.epochs[0].test_accuracy >= 0.5  # one epoch of mnist-5k passes 50%
    epoch = record.epochs[0]
    assert epoch.eval_seconds > 0 and epoch.elapsed_seconds >= epoch.seconds + epoch.eval_seconds
    assert record.time_to(0.5) == (epoch.elapsed_seconds, 1)
    assert record.time_to(0.999) is None
    assert record.setup_seconds is not None and record.timed_to_accuracy
    again = RunRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again.key.target == 0.5 and again.epochs == record.epochs


def test_an_older_record_loads_with_the_seeds_schedule_and_no_time_to_accuracy():
    path = next((REPO / "reports/machines").glob("AMD-EPYC-family-26-model-2-avx512bf16/runs/mnist-5k/simple-seed-*.json"))
    data = json.loads(path.read_text())
    assert data.get("schema", 1) < 5  # written before schema 5
    record = RunRecord.from_json(data)
    assert (record.key.schedule, record.key.target) == ("const", None)
    assert not record.timed_to_accuracy and record.time_to(0.5) is None
    assert record.name.endswith("-s777") and "const" not in record.name and "-to" not in record.name  # no new tokens


def test_the_target_is_a_one_line_error_where_there_is_none(tmp_path, capsys):
    code = main(["train", "--dataset", "synthetic", "--to-target", "--runs-dir", str(tmp_path), "--no-progress"])
    assert code != 0 and "no time-to-accuracy target for simple on synthetic" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "e3-b200", "--epochs", "4"], "--recipe sets the recipe; leave out --epochs"),
        (["--recipe", "e3-warp"], "unknown token 'warp'"),
        (["--recipe", "best"], "no recipe-search result for this machine"),
    ],
)
def test_bad_recipe_flags_are_one_line_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(recipe_search, "DEFAULT_RECIPES_PATH", tmp_path / "recipes.json")
    code = main(["train", "--dataset", "mnist-5k", "--runs-dir", str(tmp_path), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


# --- scoring --------------------------------------------------------------------------------------


def test_the_olympic_mean_drops_the_fastest_and_slowest_and_counts_a_failure_as_the_slowest():
    assert olympic_mean([5.0, 1.0, 2.0, 3.0, 100.0]) == 10 / 3
    assert olympic_mean([1.0, 2.0, 3.0, 4.0], failures=1) == 3.0  # the failure is the one dropped
    assert olympic_mean([1.0, 2.0, 3.0], failures=2) is None  # more than one failure: no score
    assert olympic_mean([1.0, 2.0]) is None


def test_the_permutation_test_is_exact():
    assert permutation_p([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == 1.0
    assert permutation_p([10.0, 11.0, 12.0, 13.0, 14.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == 2 / 252  # the two extreme splits


def test_the_speedup_interval_holds_the_ratio_of_olympic_means():
    slow, fast = [100.0, 110.0, 90.0, 105.0, 95.0], [10.0, 11.0, 9.0, 10.5, 9.5]
    low, high, level = ratio_interval(slow, fast)
    assert low <= olympic_mean(slow) / olympic_mean(fast) <= high and low > 8 and high < 12.5
    # 5 + 5 runs: the 3rd smallest and largest of 25 differences; P(U <= 2) = 4 / 252, so 96.8%
    assert level == pytest.approx(1 - 2 * 4 / 252)
    assert ratio_interval(slow, fast[:3], fast_failures=2) is None  # no olympic mean: no interval
    low, high, _ = ratio_interval(slow, fast[:4], fast_failures=1)  # a failed fast run is slower than any time
    assert low == 0.0 and 8 < high < 12.5  # it could have been arbitrarily slow: the speedup has no lower bound


def test_the_speedup_interval_covers_as_printed_by_simulation():
    import math
    import random

    rng, trials, true_ratio, covered = random.Random(5), 2000, 3.0, 0
    for _ in range(trials):
        noise = lambda: math.exp(rng.gauss(0, 0.15)) * (1 + (rng.random() < 0.2) * rng.expovariate(5))  # noqa: E731
        slow = [true_ratio * 10 * noise() for _ in range(5)]
        fast = [10 * noise() for _ in range(5)]
        low, high, level = ratio_interval(slow, fast)
        covered += low <= true_ratio <= high
    assert covered / trials >= level - 3 * math.sqrt(level * (1 - level) / trials)


# --- the report -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_record(mnist5k) -> RunRecord:
    config = dataclasses.replace(TrainConfig(model="simple", epochs=2, **QUICK), loader="seed", target=0.5)
    threads = torch.get_num_threads()  # set up before the per-test guard: give the count back here
    record = train(config, mnist5k, log=quiet)[1]
    set_threads(threads)
    return record


def _as(record: RunRecord, seed: int, times: list[float], accuracies: list[float], **key) -> RunRecord:
    """A copy of a real record with another seed, key fields and evaluation curve (the report's arithmetic under test)."""
    new_key = dataclasses.replace(record.key, seed=seed, **key)
    config = dataclasses.replace(record.config, seed=seed, **{k: v for k, v in key.items() if k != "variant"})
    if "variant" in key:
        config = dataclasses.replace(config, variant=dataclasses.replace(key["variant"], device="auto"))
    epochs = [
        dataclasses.replace(record.epochs[0], epoch=i + 1, elapsed_seconds=t, test_accuracy=a)
        for i, (t, a) in enumerate(zip(times, accuracies))
    ]
    return dataclasses.replace(record, key=new_key, config=config, epochs=epochs, test_accuracy=accuracies[-1])


def test_the_report_scores_recipes_against_the_seed_pipeline_with_failures_counted(one_record, tmp_path):
    times = [50.0, 60.0, 55.0, 65.0, 70.0]
    base = [_as(one_record, 777 + i, [t, 2 * t], [0.94, 0.96], epochs=15) for i, t in enumerate(times)]
    fast_key = dict(loader="tensor", batch_size=200, lr=0.004, schedule="onecycle", epochs=3, variant=Variant("cpu", fast=True))
    fast = [_as(one_record, 777 + i, [t], [0.955], **fast_key) for i, t in enumerate([5.0, 6.0, 5.5, 6.5])]
    fast.append(_as(one_record, 781, [5.0, 10.0, 15.0], [0.90, 0.92, 0.94], **fast_key))  # never reached 0.95
    text = tta.render(base + fast, base + fast, tmp_path, "test")
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| simple |")}
    seed_row, fast_row = rows["`e15-b100-lr0.001-const` (seed's)"], rows["`e3-b200-lr0.004-onecycle`"]
    assert "| 5/5 |" in seed_row and "| 120.0 |" in seed_row  # olympic mean of the second evaluations: (110+120+130)/3
    assert "4/5 (1 never)" in fast_row and "| 6.0 |" in fast_row  # the failure dropped as the slowest: (5.5+6+6.5)/3
    assert "20.00x (" in fast_row  # the speedup and its interval
    assert "`seed-eager-fp32`" in seed_row and "`tensor-eager-fp32-fast`" in fast_row
    assert (tmp_path / "time-to-accuracy-mnist-5k.png").stat().st_size > 10_000


def test_the_targets_section_tests_deep_against_simple(one_record, tmp_path):
    runs = [
        _as(one_record, 777 + i, [10.0] * 15, [a] * 15, target=None, loader="seed", model=m, epochs=15)
        for m, accs in (("simple", [0.91, 0.912, 0.914, 0.913, 0.915]), ("deep", [0.92, 0.923, 0.925, 0.921, 0.924]))
        for i, a in enumerate(accs)
    ]
    runs = [dataclasses.replace(r, model=dataclasses.replace(r.model, name=r.key.model)) for r in runs]
    lines = "\n".join(tta._targets_section(runs, "mnist-5k"))
    assert "n=5, seeds 777, 778, 779, 780, 781" in lines
    assert "p = 0.008" in lines and "a real difference" in lines  # 2/252, every deep run above every simple one


def test_the_summary_renders_every_machines_report_from_its_own_runs(one_record, tmp_path, monkeypatch):
    """Rendering needs no machine: `mnist-bench report` writes each machine's time-to-accuracy.md from its
    records, so an older machine's report is re-worded by this version too."""
    from mnist_models.reporting import publish

    monkeypatch.setattr(publish, "REPORTS_DIR", tmp_path)
    monkeypatch.setattr(publish, "MACHINES_DIR", tmp_path / "machines")
    other = dataclasses.replace(one_record, machine={**one_record.machine, "cpu": "Other CPU (family 1, model 2)"})
    runs = [_as(r, 777 + i, [10.0 + i], [0.96]) for r in (one_record, other) for i in range(5)]
    publish._write_tta_reports(runs, tmp_path / "accuracy-vs-cost.md", log=lambda line: None)
    for record in (one_record, other):
        text = (tmp_path / "machines" / record.machine_key / "time-to-accuracy.md").read_text()
        assert record.machine["cpu"].split(" (")[0] in text and "| 5 |" in text  # its own five runs, not ten


# --- the search -----------------------------------------------------------------------------------


def test_the_search_halves_the_candidates_stores_the_pick_and_train_uses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(targets.TARGETS, ("mnist-5k", "simple"), targets.Target(0.6, "test"))
    base = TrainConfig(model="simple", **QUICK)
    good, weak = Recipe.parse("e1-b100-lr0.003-onecycle"), Recipe.parse("e1-b500-lr0.00001-const")
    runs_dir = tmp_path / "runs"
    result = recipe_search.search(base, [weak, good], (777, 778, 779), runs_dir, budget_s=600, log=quiet)
    assert result["best"] == good.spec
    assert [f["recipe"] for f in result["finalists"]] == [good.spec]  # the weak one stopped after round 1
    assert set(result["finalists"][0]["seconds_to_target"]) == {"777", "778", "779"}
    names = sorted(p.stem for p in (runs_dir / "mnist-5k").glob("*.json"))
    # the weak one ends at chance (a divergence: no record, counted as never reaching); the good one x 3 seeds
    assert len(names) == 3 and all("-lr0.003-onecycle-to60-" in n for n in names)
    out = tmp_path / "recipes.json"
    recipe_search.store_result(out, "mnist-5k", "simple", result)
    assert recipe_search.best_recipe("mnist-5k", "simple", out) == good
    with pytest.raises(UsageError, match="no recipe-search result for deep"):
        recipe_search.best_recipe("mnist-5k", "deep", out)
    data = json.loads(out.read_text())
    out.write_text(json.dumps(data | {"results": {"mnist-5k": {"simple": result | {"best": None}}}}))
    with pytest.raises(UsageError, match="found no recipe that reached the target"):
        recipe_search.best_recipe("mnist-5k", "simple", out)
    data["machine_key"] = "another-machine"
    out.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="searched on another-machine"):
        recipe_search.best_recipe("mnist-5k", "simple", out)
    # a second search reuses every stored run: only the diverged candidate trains again
    again = recipe_search.search(base, [weak, good], (777, 778, 779), runs_dir, budget_s=600, log=quiet)
    assert again["best"] == good.spec and len(list((runs_dir / "mnist-5k").glob("*.json"))) == 3
    assert math.isfinite(again["seconds"])


def test_the_search_reads_back_the_runs_its_rounds_stored_where_they_were_placed(tmp_path, monkeypatch):
    """A Ray round resolves each run with its task's CPUs as threads; the search once looked for the key of
    this process's threads instead and stopped with "left no record" after a round that had succeeded."""
    from mnist_models.runs.train import train

    monkeypatch.setitem(targets.TARGETS, ("mnist-5k", "simple"), targets.Target(0.6, "test"))
    set_threads(2)
    store = RunStore(tmp_path / "runs")

    def one_cpu_round(configs):  # as a Ray round with --cpus-per-run 1 would place them
        keys = {config: config.resolve(default_threads=1) for config in configs}
        for config, key in keys.items():
            model, record = train(config, log=quiet, key=key)
            store.save(record, model)
        set_threads(2)  # a Ray task trains in its own process: the driver's threads stay as they were
        return {"trained": len(configs), "failed": [], "keys": keys}

    good = Recipe.parse("e1-b100-lr0.003-onecycle")
    base = TrainConfig(model="simple", **(QUICK | {"threads": None}))  # threads: where the round places the run
    result = recipe_search.search(base, [good], (777,), tmp_path / "runs", budget_s=600, train_round=one_cpu_round, log=quiet)
    assert result["best"] == good.spec
    assert [r.key.threads for r in store.load_all()[0]] == [1]  # stored at the round's 1 thread, not this process's 2


def test_a_runs_store_finds_runs_to_a_target_apart_from_full_runs(one_record, tmp_path):
    store = RunStore(tmp_path)
    model = build("simple", Variant("cpu")).model
    store.save(one_record, model)
    full = dataclasses.replace(one_record.key, target=None)
    assert store.find(one_record.key).record is not None and store.find(full).record is None
