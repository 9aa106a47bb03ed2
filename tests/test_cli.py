"""The console script end to end: real subprocesses for the happy path, main() for bad input."""

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_models import cli
from mnist_models.core.nets import build_model
from mnist_models.system.machine import machine_key, this_machine

FAST = ["--dataset", "mnist-5k", "--epochs", "1", "--loader", "tensor", "--no-progress", "--no-latency"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mnist_models.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_train_end_to_end(tmp_path):
    result = run_cli(
        "train", "--model", "simple", "--dataset", "mnist-5k", "--epochs", "1", "--no-progress", "--runs-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[Epoch:    1] cost = ")
    assert "Seed-style accuracy:" in result.stdout and "Traceback" not in result.stderr
    (record_path,) = (tmp_path / "mnist-5k").glob("*.json")
    record = json.loads(record_path.read_text())
    threads = record["busy_before_start"]["torch_threads"]
    assert record_path.name == f"simple-seed-cpu-eager-fp32-t{threads}-e1-s777.json"  # the whole recipe
    assert record["config"]["loader"] == "seed" and record["config"]["seed"] == 777
    assert record["dataset"] == {**record["dataset"], "name": "mnist-5k", "train": 4000, "test": 1000}
    assert record["test_accuracy"] > 0.5 and 0 <= record["seed_style_accuracy"] <= 1
    assert record["machine"]["torch"] == torch.__version__
    if sys.platform.startswith("linux"):
        assert record["machine"]["allocator"]["keeps_freed"] is True  # what timed the run is in its record
    assert {"cost", "seconds", "steps", "test_accuracy"} <= set(record["epochs"][0])
    model = build_model("simple")
    model.load_state_dict(torch.load(record["weights"], weights_only=True))
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_help_explains_every_flag():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for flag in (
        "--model",
        "--dataset",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--loader",
        "--compile",
        "--precision",
        "--channels-last",
        "--threads",
        "--runs-dir",
        "--overwrite",
    ):
        assert flag in result.stdout


def test_every_option_of_every_subcommand_has_help_text():
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subcommands) == {
        "train",
        "sweep",
        "tune",
        "profile",
        "report",
        "compare",
        "ab",
        "calibrate",
        "bisect",
        "explain",
        "recipe-search",
        "targets",
        "data",
    }
    for name, sub in subcommands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, f"{name} {action.option_strings or action.dest} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in action.help, f"{name} {action.option_strings} does not say its default"


def one_line_error(capsys, argv, code=2):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(argv))
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "vgg"], "invalid choice: 'vgg'"),
        (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["train", "--epochs", "0"], "must be positive"),
        (["train", "--batch-size", "-5"], "must be positive"),
        (["train", "--epochs", "two"], "expected a whole number"),
        (["sweep", "--variants", "tensor-fp64", *FAST], "unknown token 'fp64'"),
        (["sweep", "--cpus-per-run", "1", *FAST], "--cpus-per-run: for a sweep on a cluster"),
        (["sweep", "--cluster", "ray", "--address", "127.0.0.1:1", *FAST], "cannot reach a Ray cluster at '127.0.0.1:1'"),
        (
            ["sweep", "--cluster", "ray", "--address", "nowhere", *FAST],
            "--address must be local, auto, HOST:PORT, [IPv6]:PORT or ray://HOST:PORT",
        ),
        (["data", "cifar10"], "unknown dataset 'cifar10'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_give_one_line(capsys, argv, message, tmp_path):
    assert message in one_line_error(capsys, [*argv, "--runs-dir", str(tmp_path)] if argv[:1] == ["sweep"] else argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--device", "cuda", *FAST, "--runs-dir", str(tmp_path)])
    assert "no CUDA GPU" in err
    assert not any(tmp_path.iterdir())


def test_missing_dataset_names_offline_alternatives(capsys, tmp_path, monkeypatch):
    # Downloading is attempted for real; with no network it fails and the message says what works offline.
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("no network in this test")))
    err = one_line_error(
        capsys, ["train", "--dataset", "mnist", "--data-root", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    )
    assert "could not be downloaded" in err and "mnist-5k" in err
    assert not list((tmp_path / "runs").rglob("*.*"))  # no record, no weights


def test_corrupt_idx_file(capsys, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    err = one_line_error(
        capsys, ["train", "--dataset", "mnist", "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    )
    assert "corrupt IDX file" in err


def test_nan_loss_exits_non_zero_and_writes_nothing(capsys, tmp_path):
    err = one_line_error(capsys, ["train", *FAST, "--lr", "1e30", "--runs-dir", str(tmp_path)], code=3)
    assert "diverged" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_runs_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = one_line_error(capsys, ["train", *FAST, "--runs-dir", str(blocker / "runs")])
    assert "cannot write" in err


def test_data_lists_what_is_available(capsys):
    assert cli.main(["data", "mnist-5k"]) == 0
    assert "4,000 train" in capsys.readouterr().out


def test_data_exits_non_zero_when_a_named_dataset_is_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("mnist_models.core.data.DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    assert cli.main(["data", "fashion-mnist", "--data-root", str(tmp_path)]) == 1
    assert "fashion-mnist  unavailable" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("mnist-bench 0.")


def test_train_json_prints_the_record_alone_on_stdout(tmp_path):
    result = run_cli("train", "--json", *FAST, "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert data["kind"] == "mnist-bench train run" and data["config"]["epochs"] == 1
    assert data["record_path"].endswith(f"{data['name']}.json")
    assert json.loads(Path(data["record_path"]).read_text())["test_accuracy"] == data["test_accuracy"]
    assert "[Epoch:    1] cost = " in result.stderr  # the seed's epoch line still reaches the user


def test_data_json(capsys, tmp_path, monkeypatch):
    assert cli.main(["data", "mnist-5k", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["datasets"] == [
        {"name": "mnist-5k", "available": True, "train": 4000, "test": 1000, "source": data["datasets"][0]["source"]}
    ]
    monkeypatch.setattr("mnist_models.core.data.DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    assert cli.main(["data", "fashion-mnist", "--json", "--data-root", str(tmp_path)]) == 1
    [missing] = json.loads(capsys.readouterr().out)["datasets"]
    assert missing["name"] == "fashion-mnist" and missing["available"] is False and missing["problem"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "--no-accuracy"], "--no-accuracy leaves nothing to do"),
        (["report", "--bench-out", "x.md"], "--bench-out renders a benchmark report from --bench-json FILE"),
        (
            ["report", "--no-accuracy", "--bench-json", "b.json", "--bench-out", "x.md", "--runs-dir", "r"],
            "--runs-dir belong to the accuracy report",
        ),
    ],
)
def test_report_refuses_flags_that_would_do_nothing(capsys, argv, message):
    assert message in one_line_error(capsys, argv)


@pytest.mark.slow
def test_default_paths_are_relative_to_the_home_not_the_current_folder(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"MNIST_BENCH_HOME": str(home)}
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=600, env=env)
    trained = run([sys.executable, "-m", "mnist_models", "train", *FAST], cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr
    runs = home / "reports" / "machines" / machine_key(this_machine()) / "runs" / "mnist-5k"  # this machine's folder
    [record] = runs.glob("*.json")
    shown = json.loads(record.read_text())["weights"]
    assert shown == str((runs / "weights" / f"{record.stem}.pt").relative_to(home))  # shown relative to the home
    reported = run([sys.executable, "-m", "mnist_models", "report"], cwd=elsewhere / "..")
    assert reported.returncode == 0, reported.stderr
    assert (home / "reports" / "accuracy-vs-cost.md").exists()
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "reports").exists()  # nothing scattered


def test_home_resolution(tmp_path, monkeypatch):
    from mnist_models.system import paths

    monkeypatch.setenv("MNIST_BENCH_HOME", str(tmp_path))
    assert paths.home() == tmp_path.resolve()
    assert paths.shown(tmp_path / "reports" / "x.md") == "reports/x.md"
    assert paths.shown("/elsewhere/x.md") == "/elsewhere/x.md"
    monkeypatch.delenv("MNIST_BENCH_HOME")
    assert paths.home() == Path(__file__).resolve().parent.parent  # this checkout: the package runs from it


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    """`mnist-bench data | head -1`: the reader leaves after one line; no traceback, exit 0."""
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path)}
    cmd = f"{sys.executable} -m mnist_models data | head -1"
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith("mnist ")


def test_a_torchrun_rank_ends_without_the_interpreters_teardown(monkeypatch):
    """gloo's teardown at interpreter exit aborted finished ranks (SIGABRT); a rank leaves through
    scale.distributed.leave, and every way the CLI is run as a process ends through distributed.end_process."""
    from mnist_models.scale import distributed

    root = Path(__file__).resolve().parent.parent

    left = []
    monkeypatch.setattr(distributed, "leave", left.append)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with pytest.raises(SystemExit):  # the real leave never returns; this one does, so sys.exit follows
        distributed.end_process(3)
    assert left == [3]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(SystemExit) as ended:
        distributed.end_process(2)
    assert ended.value.code == 2 and left == [3]
    assert 'mnist-bench = "mnist_models.cli:run_as_process"' in (root / "pyproject.toml").read_text()
    for path in [root / "mnist_models" / "__main__.py", *(root / "tests" / "helpers").glob("*.py")]:
        text = path.read_text()
        assert "cli.main(" not in text or "end_process(" in text, f"{path.name} ends another way than a rank does"
