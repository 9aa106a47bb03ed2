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
def test_without_a_gpu_it_lists_and_checks_every_step_and_exits_0():
    result = subprocess.run([str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "no CUDA GPU is visible" in out and "a dry run" in out
    steps = [line for line in out.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(steps) == 9 and "DDP, one GPU, nccl" in steps[-1]  # DDP exists, so its nccl run is a step
    checks = [line for line in out.splitlines() if line.strip().startswith("check:")]
    assert len(checks) == 9 and all("command parses" in c or "tests collected" in c for c in checks)
    assert "32/" in checks[1]  # the quick CUDA benchmark subset selects its cases (they skip here)


def _bench(name, median, **info):
    return {"name": name, "stats": {"median": median, "iqr": 0.0, "rounds": 5}, "extra_info": info}


def test_the_fastest_measured_variant_becomes_the_training_flags():
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
