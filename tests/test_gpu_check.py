"""scripts/gpu-check: the dry run on a machine without a GPU, and how it picks the variant to train."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_models.cli import build_parser
from mnist_models.reporting.benchmarks import fastest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for real")
def test_the_dry_run_names_its_budget_and_folder_and_runs_the_cuda_code_a_cpu_can(tmp_path):
    out = tmp_path / "gpu-out"
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = result.stdout
    assert f"budget {gpu_check.BUDGET_SECONDS} s; output folder {out}" in text and gpu_check.BUDGET_SECONDS <= 480
    steps = [line for line in text.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(steps) == 7 and "DDP, one rank, nccl" in steps[-1]
    checks = [line for line in text.splitlines() if line.strip().startswith("check:")]
    assert len(checks) == 7 and all("command parses" in c or "tests collected" in c for c in checks)
    total = sum(step.timeout for step in gpu_check.plan(out, "fashion-mnist"))
    assert f"the limits add up to {total} s" in text and total <= gpu_check.BUDGET_SECONDS
    assert "tests/test_cuda_paths.py): " in text and "passed" in text.split("tests/test_cuda_paths.py): ")[1]
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_a_real_run_checks_nothing_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_state", lambda: (False, ""))
    assert gpu_check.main(["--out", "x"]) == 2
    assert "no GPU on this machine: nothing was checked" in capsys.readouterr().err
    monkeypatch.setattr(gpu_check, "gpu_state", lambda: (False, "a GPU is here (/dev/nvidia0) but torch cannot use it"))
    assert gpu_check.main(["--out", "x"]) == 1  # never a silent pass on a GPU box with a CPU-only wheel
    assert "torch cannot use it" in capsys.readouterr().err


def test_a_real_run_refuses_a_folder_with_old_results(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check, "gpu_state", lambda: (True, "Test GPU"))
    (tmp_path / "benchmarks-cuda.json").write_text("{}")  # an earlier run's
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_the_summary_scores_against_the_datasets_target_and_names_the_first_epoch():
    from types import SimpleNamespace

    from mnist_models.core.targets import target_for

    target = target_for("fashion-mnist", "simple").accuracy
    epochs = [
        SimpleNamespace(seconds=s, test_accuracy=a)
        for s, a in ((9.0, target - 0.05), (3.0, target + 0.001), (3.0, target + 0.002))
    ]
    record = SimpleNamespace(
        device="cuda",
        dataset=SimpleNamespace(name="fashion-mnist"),
        config=SimpleNamespace(model="simple"),
        epochs=epochs,
        name="simple-cuda-run",
        test_accuracy=target + 0.002,
    )
    (line,) = gpu_check.epoch_lines([record], "fashion-mnist")
    assert "3.00 s/epoch after the first (9.00 s)" in line and "to " in line and ": 12.0 s" in line


def _bench(name, median, **info):
    return {"name": name, "stats": {"median": median, "iqr": 0.0, "rounds": 5}, "extra_info": info}


def test_the_fastest_measured_variant_becomes_training_flags():
    common = dict(suite="train-step", model="deep", device="cuda", batch=100)
    data = {
        "benchmarks": [
            _bench("eager", 0.004, compile="off", precision="fp32", channels_last=False, **common),
            _bench("bf16-cl", 0.002, compile="off", precision="bf16", channels_last=True, **common),
            _bench("bf16-cl-t1", 0.001, compile="off", precision="bf16", channels_last=True, threads_pinned=True, **common),
            _bench("simple", 0.0005, compile="default", precision="fp16", channels_last=False, **{**common, "model": "simple"}),
        ]
    }
    best = fastest(data, "train-step", "deep", "cuda", 100)
    assert (best.variant.precision, best.variant.channels_last) == ("bf16", True)  # pinned-thread rows are not candidates
    flags = gpu_check.variant_flags(best)
    args = build_parser().parse_args(["train", "--model", "deep", *flags])
    assert (args.precision, args.channels_last, args.compile) == ("bf16", True, "off")
    assert gpu_check.variant_flags(None) == [] and fastest(data, "forward", "deep", "cuda", 100) is None
