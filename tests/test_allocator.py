"""The host allocator keeps a train step's freed memory (system/allocator.py): measured in fresh
processes by the kernel's own count of minor page faults, and recorded where figures are shown."""

import json
import os
import subprocess
import sys

import pytest

from mnist_models import cli
from mnist_models.reporting.markdown import header
from mnist_models.system.allocator import MODE_ENV, describe
from mnist_models.system.machine import this_machine

# Ten warmed-up fast-path train steps of the simple net (batch 100), in a process that first sets
# the allocator as the CLI does; prints the state and the minor page faults per step.
STEPS = """
import json, resource, torch
from mnist_models.system.allocator import keep_freed_memory
state = keep_freed_memory()
from mnist_models.core.harness import build
from mnist_models.core.variants import Variant
torch.set_num_threads(1)
variant = Variant(channels_last=True, fast=True)
work = build("simple", variant, "train", seed=0)
x, y = variant.to_input(torch.rand(100, 1, 28, 28)), torch.randint(0, 10, (100,))
for _ in range(3):
    work.step(x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    work.step(x, y)
print(json.dumps({"state": state, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""


def _steps(mode: str) -> dict:
    env = os.environ | {MODE_ENV: mode}
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is set on Linux only")
def test_kept_memory_spares_a_train_step_its_page_faults():
    system, keep = _steps("system"), _steps("keep")
    assert system["state"] == {"malloc": "glibc", "keeps_freed": False, "why": f"{MODE_ENV}=system"}
    assert keep["state"]["keeps_freed"] and keep["state"]["mmap_threshold"] == 32 << 20
    # Measured on a Zen 3: about 6,500 faults per step with glibc's defaults, 0-100 kept.
    assert system["faults"] > 1000, system
    assert keep["faults"] < system["faults"] / 10, (keep, system)


def test_an_unknown_mode_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv(MODE_ENV, "jemalloc")
    monkeypatch.setattr("mnist_models.system.allocator._state", None)
    assert cli.main(["targets"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mnist-bench: error: {MODE_ENV}='jemalloc' is not a mode; choose one of: keep, system"


def test_reports_say_which_allocator_timed_them():
    kept = {"malloc": "glibc", "keeps_freed": True, "mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}
    machine = this_machine() | {"allocator": kept}
    text = header("t", machine, ["mnist-5k"], "cmd")
    assert "- **Allocator**: glibc malloc keeps freed memory (mmap threshold 32 MiB, trim threshold 1 GiB)" in text
    assert "- **Allocator**" not in header("t", this_machine() | {"allocator": None}, ["mnist-5k"], "cmd")  # older data
    assert describe({"malloc": "glibc", "keeps_freed": False, "why": "x"}) == "glibc malloc's own defaults (x)"
