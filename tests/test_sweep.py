import json

import pytest

from mnist_models.runs import sweep as sweep_mod
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import RunStore
from mnist_models.runs.sweep import parse_variant_spec, run_sweep, sweep_configs
from mnist_models.system.errors import UsageError


def counts(result: dict) -> dict:
    """A sweep's counts, without the key of every config it also returns (checked in test_tta)."""
    return {k: v for k, v in result.items() if k != "keys"}


def load_runs(folder):
    return RunStore(folder).load_all()


BASE = TrainConfig(dataset="mnist-5k", epochs=1, measure_latency=False)


def test_variant_specs():
    assert parse_variant_spec("seed-eager-fp32") == {"loader": "seed", "compile": "off", "precision": "fp32"}
    assert parse_variant_spec("tensor-compile-bf16-cl") == {
        "loader": "tensor",
        "compile": "default",
        "precision": "bf16",
        "channels_last": True,
    }
    with pytest.raises(UsageError, match="unknown token 'nhwc'"):
        parse_variant_spec("tensor-nhwc")


def test_grid_is_seed_major():
    configs = sweep_configs(BASE, ["simple", "deep"], ["tensor-eager-fp32"], [1, 2])
    assert [(c.seed, c.model) for c in configs] == [(1, "simple"), (1, "deep"), (2, "simple"), (2, "deep")]


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_loses_nothing(tmp_path, monkeypatch):
    configs = sweep_configs(BASE, ["simple"], ["tensor-eager-fp32"], [1, 2, 3])
    real_train = sweep_mod.train
    calls = []

    def train_then_interrupt(config, *args, **kwargs):
        calls.append(config.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second run
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(sweep_mod, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(configs, tmp_path, progress=False, log=lambda line: None)
    finished = sorted(p.name for p in (tmp_path / "mnist-5k").glob("*.json"))
    assert finished == [f"{configs[0].resolve().name}.json"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]

    monkeypatch.setattr(sweep_mod, "train", real_train)
    assert counts(run_sweep(configs, tmp_path, progress=False, log=lambda line: None)) == {
        "trained": 2,
        "skipped": 1,
        "claimed_elsewhere": 0,
        "failed": [],
    }
    assert counts(run_sweep(configs, tmp_path, progress=False, log=lambda line: None)) == {
        "trained": 0,
        "skipped": 3,
        "claimed_elsewhere": 0,
        "failed": [],
    }
    runs, problems = load_runs(tmp_path)
    assert sorted(r.config.seed for r in runs) == [1, 2, 3] and problems == []


def test_corrupt_record_is_reported_and_skipped(tmp_path):
    folder = tmp_path / "mnist-5k"
    folder.mkdir()
    (folder / "broken.json").write_text("{ not json")
    (folder / "partial.json").write_text(json.dumps({"kind": "mnist-bench train run", "config": {}}))
    runs, problems = load_runs(tmp_path)
    assert runs == []
    assert len(problems) == 2 and all("skipped run record" in p for p in problems)


def test_missing_runs_dir(tmp_path):
    with pytest.raises(UsageError, match="no runs directory"):
        load_runs(tmp_path / "nowhere")


@pytest.mark.slow
def test_redo_contended_retrains_only_runs_timed_on_a_shared_cpu(tmp_path):
    configs = sweep_configs(BASE, ["simple"], ["tensor-eager-fp32"], [1, 2])
    run_sweep(configs, tmp_path, progress=False, log=lambda line: None)
    shared = tmp_path / "mnist-5k" / f"{configs[0].resolve().name}.json"
    record = json.loads(shared.read_text())
    record["busy_before_start"]["busy"] = False
    record["cores_used_by_others_during_run"] = 1.0  # a neighbour ran beside it
    record["train_seconds"] = 12345.0
    shared.write_text(json.dumps(record))
    quiet = tmp_path / "mnist-5k" / f"{configs[1].resolve().name}.json"
    quiet_record = json.loads(quiet.read_text())
    quiet_record["cores_used_by_others_during_run"] = 0.0
    quiet_record["busy_before_start"]["busy"] = False
    quiet.write_text(json.dumps(quiet_record))

    # without the flag a finished run is never retrained
    assert counts(run_sweep(configs, tmp_path, progress=False, log=lambda line: None)) == {
        "trained": 0,
        "skipped": 2,
        "claimed_elsewhere": 0,
        "failed": [],
    }
    assert counts(run_sweep(configs, tmp_path, progress=False, log=lambda line: None, redo_contended=True)) == {
        "trained": 1,
        "skipped": 1,
        "claimed_elsewhere": 0,
        "failed": [],
    }
    redone = json.loads(shared.read_text())
    assert redone["replaces"]["train_seconds"] == 12345.0 and redone["replaces"]["cores_used_by_others_during_run"] == 1.0
    assert redone["train_seconds"] != 12345.0
    assert json.loads(quiet.read_text()) == quiet_record
