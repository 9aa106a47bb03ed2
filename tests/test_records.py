"""The run record: its schema, the migration of committed records, validation, and the runs folder."""

import json
import shutil
from pathlib import Path

import pytest

from mnist_models.core.variants import parse_tag
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import SCHEMA_VERSION, RunRecord, RunStore, load_record
from mnist_models.runs.train import train
from mnist_models.system.errors import RecordError, RunExists

MACHINES = Path(__file__).resolve().parent.parent / "reports" / "machines"
COMMITTED = sorted(MACHINES.glob("*/runs"))  # each machine's run records
UNVERSIONED = MACHINES / "AMD-EPYC-family-26-model-2-avx512bf16" / "runs" / "mnist-5k" / "deep-seed-cpu-eager-fp32-s777.json"
FAST = dict(dataset="mnist-5k", loader="tensor", epochs=1, measure_latency=False)


@pytest.fixture(scope="module")
def trained(small5k):
    return train(TrainConfig(model="simple", **FAST), small5k, log=lambda line: None)


def test_an_unversioned_committed_record_migrates(tmp_path):
    copy = tmp_path / UNVERSIONED.name
    shutil.copy(UNVERSIONED, copy)
    raw = json.loads(copy.read_text())
    assert "schema" not in raw  # written before records had a version
    record = load_record(copy)
    assert record.schema == SCHEMA_VERSION
    assert record.device == "cpu" and record.config.threads == 1
    assert record.test_accuracy == raw["test_accuracy"] and len(record.epochs) == 15
    assert record.epochs[-1].cost == raw["epochs"][-1]["cost"]
    assert record.replaces["test_accuracy"] == raw["replaces"]["test_accuracy"]
    # its identity is its whole recipe, which its old file name did not say (threads)
    assert record.name == "deep-seed-cpu-eager-fp32-t1-s777"
    again = RunRecord.from_json(record.to_json())
    assert again.to_json() == record.to_json()


def test_every_committed_record_loads_and_lies_in_its_machines_folder():
    assert len(COMMITTED) >= 2
    for folder in COMMITTED:
        records, problems = RunStore(folder).load_all()
        assert problems == []
        assert len(records) == len(list(folder.rglob("*.json")))
        assert {r.machine_key for r in records} == {folder.parent.name}


def test_committed_records_migrate_to_a_stored_key_without_renaming(tmp_path):
    """Schema 3 kept the variant's fields loose in the config and re-derived device and threads on
    every read; schema 4 stores the resolved key. A migrated record keeps its name (so the file it is
    in still finds it), its key round-trips, and a key that disagrees with its config is refused."""
    for folder in COMMITTED:
        shutil.copytree(folder, tmp_path / folder.parent.name)
    paths = sorted(tmp_path.rglob("*.json"))
    for path in paths:
        raw = json.loads(path.read_text())
        record = load_record(path)
        assert record.schema == SCHEMA_VERSION and raw.get("schema", 1) <= SCHEMA_VERSION
        if "threads" in parse_tag(path.stem):  # named by the whole recipe (older files have shorter names)
            assert record.name == path.stem  # the same identity as before the migration
        assert record.variant.device == raw.get("device", "cpu") and record.threads >= 1
        again = RunRecord.from_json(json.loads(json.dumps(record.to_json())))
        assert again.key == record.key and again.to_json() == record.to_json()
    data = load_record(paths[0]).to_json()
    data["key"]["seed"] += 1
    with pytest.raises(RecordError, match="disagrees with the config in: seed"):
        RunRecord.from_json(data)


def test_a_written_record_round_trips(trained, tmp_path):
    model, record = trained
    path = RunStore(tmp_path).save(record, model)
    loaded = load_record(path)
    assert loaded.to_json() == record.to_json()
    assert json.loads(path.read_text())["schema"] == SCHEMA_VERSION
    assert loaded.key == TrainConfig(model="simple", **FAST).resolve()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d["config"].pop("loader"), "missing config field"),  # no default may turn it into another run
        (lambda d: d.__setitem__("dataset", "mnist-5k"), "DatasetInfo must be an object"),
        (lambda d: d.__setitem__("epochs", []), "no epochs"),
        (lambda d: d.__setitem__("test_accuracy", "high"), "test accuracy must be a finite number"),
        (lambda d: d.__setitem__("test_accuracy", 1.5), "out of range"),
        (lambda d: d["config"].__setitem__("dataset", "x/../../escape"), "unknown dataset"),
        (lambda d: d["dataset"].__setitem__("name", "x/../../escape"), "unknown dataset"),
        (lambda d: d["config"].__setitem__("model", "<script>"), "unknown model"),
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d.__setitem__("schema", 99), "newer than this code reads"),
        (lambda d: d["config"].__setitem__("colour", "red"), "unknown config field"),
    ],
)
def test_wrong_shapes_are_record_errors(trained, tmp_path, damage, message):
    _, record = trained
    data = record.to_json()
    damage(data)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=message) as exc:
        load_record(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_not_json_and_not_a_record(tmp_path):
    for text, message in (("", "not readable JSON"), ("{", "not readable JSON"), ("[]", "not an"), ('{"kind": "x"}', "not an")):
        path = tmp_path / "r.json"
        path.write_text(text)
        with pytest.raises(RecordError, match=message):
            load_record(path)


def test_a_finished_run_is_kept_unless_asked(trained, tmp_path):
    model, record = trained
    store = RunStore(tmp_path)
    path = store.save(record, model)
    before = path.read_text()
    with pytest.raises(RunExists, match="--overwrite"):
        store.save(record, model)
    assert path.read_text() == before
    store.save(record, model, overwrite=True)


def test_contended_verdict(trained):
    _, record = trained
    quiet = RunRecord.from_json(record.to_json() | {"busy_before_start": {"busy": False}, "cores_used_by_others_during_run": 0.0})
    assert not quiet.contended
    assert RunRecord.from_json(quiet.to_json() | {"cores_used_by_others_during_run": 1.0}).contended
    assert RunRecord.from_json(quiet.to_json() | {"busy_before_start": {"busy": True}}).contended
