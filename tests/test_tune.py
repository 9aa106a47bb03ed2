"""mnist-bench tune: the grid, the pick, the stored choice and `--variant best` (timings stubbed)."""

import json

import pytest

from mnist_models import cli
from mnist_models.core.variants import Variant
from mnist_models.runs import tune
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.sweep import sweep_configs
from mnist_models.system.errors import UsageError


# A timing table: per candidate, seconds as if measured. cl + fast is fastest per step; through the
# tensor loader it is also the fastest epoch, and the seed's DataLoader adds half a second.
def step_table(c, dataset):
    v = c.variant
    return 0.050 - 0.010 * v.channels_last - 0.005 * v.fast - 0.012 * (v.precision == "bf16") + 0.020 * (c.threads == 1)


def epoch_table(c, dataset):
    return 40 * step_table(c, dataset) + (0.5 if c.loader == "seed" else 0.1)


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "native_bf16", lambda: True)
    result = tune.tune(["simple", "deep"], step_timer=step_table, epoch_timer=epoch_table, log=lambda line: None)
    return result, tune.save_tuning(result, tmp_path)


def test_tune_picks_the_fastest_epoch_of_the_table(tuned):
    result, _ = tuned
    for model in ("simple", "deep"):
        best = result.best[model]
        assert (best.loader, best.variant.precision, best.variant.channels_last, best.variant.fast, best.threads) == (
            "tensor",
            "bf16",
            True,
            True,
            max(2, best.threads),
        )
        assert result.epochs[best.name] == min(t for n, t in result.epochs.items() if n.startswith(f"{model}-"))
        assert result.reference[model] > result.epochs[best.name]  # the seed pipeline, timed as the reference
    assert len(result.steps) == 2 * 2 * 2 * 2 * len({1, 2})  # nets x precision x cl x fast x threads (here: 2 cores)
    assert any("torch.compile" in line for line in result.skipped)


def test_emulated_bf16_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(tune, "native_bf16", lambda: False)
    grid, skipped = tune.candidates(["simple"], cores=2, with_compile=True)
    assert {c.variant.precision for c in grid} == {"fp32"} and {c.variant.compile for c in grid} == {"off", "default"}
    assert any(line.startswith("bf16: emulated") for line in skipped)


def test_the_budget_bounds_the_work(monkeypatch):
    monkeypatch.setattr(tune, "native_bf16", lambda: True)
    result = tune.tune(["simple"], budget_s=0, step_timer=step_table, epoch_timer=epoch_table, log=lambda line: None)
    assert len(result.steps) == 1 and result.unmeasured  # the first timing runs, the rest are left out and counted
    assert "simple" in result.best


def test_train_and_sweep_use_the_stored_choice(tuned, monkeypatch):
    _, path = tuned
    monkeypatch.setattr(tune, "DEFAULT_TUNE_DIR", path.parent.parent)  # <machines>/<machine>/tune.json
    stored = json.loads(path.read_text())
    assert stored["best"]["simple"]["variant"]["fast"] is True and stored["machine"]["cpu"]
    fields = tune.best_choice("simple")  # from the default folder: the one the CLI reads
    assert fields == {
        "loader": "tensor",
        "compile": "off",
        "precision": "bf16",
        "channels_last": True,
        "fast": True,
        "threads": stored["best"]["simple"]["threads"],
    }
    [config] = sweep_configs(TrainConfig(dataset="mnist-5k"), ["simple"], ["best"], [1])
    assert config.loader == "tensor" and config.variant == Variant("auto", "off", "bf16", True, True)


def test_best_without_a_tune_result_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune, "DEFAULT_TUNE_DIR", tmp_path)
    with pytest.raises(UsageError, match="no tuned variant for this machine"):
        tune.load_best("simple", tmp_path)
    assert cli.main(["train", "--variant", "best", "--dataset", "mnist-5k", "--runs-dir", str(tmp_path)]) == 2
    assert "run mnist-bench tune first" in capsys.readouterr().err
    assert cli.main(["train", "--variant", "tensor-eager-fp32", "--fast", "--runs-dir", str(tmp_path)]) == 2
    assert "leave out --fast" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_mixing_best_and_a_plain_variant_skips_every_finished_run_on_a_rerun(tuned, monkeypatch, tmp_path, capsys):
    """The tuned choice names its threads, the plain variant leaves them to the process: each run's key
    is resolved once, so the run that trains after the tuned one neither inherits its thread count nor
    is saved under another name than the one the rerun looks for."""
    _, path = tuned
    monkeypatch.setattr(tune, "DEFAULT_TUNE_DIR", path.parent.parent)  # <machines>/<machine>/tune.json
    runs = tmp_path / "runs"
    argv = [
        "sweep",
        "--models",
        "simple",
        "--variants",
        "best",
        "seed-eager-fp32",
        "--seeds",
        "1",
        "--dataset",
        "mnist-5k",
        "--epochs",
        "1",
        "--no-latency",
        "--no-progress",
        "--runs-dir",
        str(runs),
    ]
    assert cli.main(argv) == 0
    assert "2 trained, 0 already finished" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "0 trained, 2 already finished" in capsys.readouterr().out


def test_a_pick_within_noise_of_a_simpler_runner_up_goes_to_the_simpler(monkeypatch):
    """The pick rests on interleaved epoch pairs, never on one timing each: within noise, fewer switches win."""
    fast = tune.Candidate("simple", 2, Variant("cpu", "off", "bf16", True, True))
    plain = tune.Candidate("simple", 2, Variant("cpu", "off", "bf16", True, False))
    pairs = tune.DECIDING_PAIRS
    noisy = {fast.name: iter([1.00, 1.25] * 3), plain.name: iter([1.10, 1.00] * 3)}  # fastest by its median
    pick, why = tune.decide(fast, plain, lambda c, d: next(noisy[c.name]), None, 0.05)
    assert pick == plain and "within noise" in why and "simpler" in why
    # 1.2% faster in every pair: the interval excludes 1, but the difference is below the machine's
    # threshold (a tune once switched deep's pick on such a difference): still a tie, the simpler kept
    close = {fast.name: iter([0.988] * pairs), plain.name: iter([1.0] * pairs)}
    pick, why = tune.decide(fast, plain, lambda c, d: next(close[c.name]), None, 0.05)
    assert pick == plain and "within noise" in why
    steady = {fast.name: iter([1.0] * pairs), plain.name: iter([1.2] * pairs)}
    pick, why = tune.decide(fast, plain, lambda c, d: next(steady[c.name]), None, 0.05)
    assert pick == fast and "beyond noise" in why


def test_the_speedup_over_the_seed_pipeline_is_interleaved_with_its_interval(tuned):
    result, path = tuned
    stored = json.loads(path.read_text())
    for model in ("simple", "deep"):
        ratio = result.speedups[model]
        assert (
            ratio.rounds == tune.DECIDING_PAIRS
            and ratio.level >= 0.95
            and ratio.estimate == pytest.approx(result.reference[model] / result.epochs[result.best[model].name])
        )
        assert stored["speedup_over_seed_pipeline"][model]["rounds"] == tune.DECIDING_PAIRS and model in stored["decisions"]


def test_a_saved_result_re_renders_to_the_same_report(tuned):
    result, path = tuned
    data = json.loads(path.read_text())
    fresh = tune.render_tuning(result, data["machine"])
    again = tune.render_tuning(tune.Tuning.from_json(data), data["machine"], "abc1234")
    body = lambda text: text.split("\n", 3)[3]  # past the header line, which names the re-rendering  # noqa: E731
    assert body(again) == body(fresh) and "re-rendered by `mnist-bench report` at code abc1234" in again


def test_an_older_result_says_its_levels_are_unknown(tuned):
    """A tune.json from before intervals carried their level printed "95%" for 3 rounds (a 75% range):
    re-rendered, no interval claims 95% and the report says why."""
    _, path = tuned
    data = json.loads(path.read_text())
    for model, ratio in data["speedup_over_seed_pipeline"].items():
        ratio.pop("level")
        ratio["rounds"] = 3
        data["decisions"][model] = "a beats b beyond noise: 0.800x (95% interval 0.731-0.873, 3 rounds)"
    path.write_text(json.dumps(data))
    tune.rerender_saved(path, "abc1234")
    text = path.with_suffix(".md").read_text()
    assert "95% interval" not in text and text.count("level unknown") >= 4
    assert "a range of 3 rounds covers 75%" in text
