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

# In a process that first sets the allocator as the CLI does: how much of a freed 20 MiB tensor the
# process keeps (resident MiB before, with, after), then the minor page faults per warmed-up
# fast-path train step of the simple net (batch 100).
STEPS = """
import json, os, resource, torch
from mnist_models.system.allocator import keep_freed_memory
state = keep_freed_memory()
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mib(); x = torch.ones(5 << 20); held = resident_mib(); del x; after = resident_mib()
from mnist_models.core.harness import build
from mnist_models.core.variants import Variant
torch.set_num_threads(1)
variant = Variant(channels_last=True, fast=True)
work = build("simple", variant, "train", seed=0)
x, y = variant.to_input(torch.rand(100, 1, 28, 28)), torch.randint(0, 10, (100,))
for _ in range(3):
    work.step(x, y)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    work.step(x, y)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 10
print(json.dumps({"state": state, "resident": [before, held, after], "faults": faults}))
"""


def _steps(mode: str) -> dict:
    env = os.environ | {MODE_ENV: mode}
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is set on Linux only")
def test_kept_memory_stays_in_the_process_and_spares_a_train_step_its_page_faults():
    system, keep = _steps("system"), _steps("keep")
    assert system["state"] == {"malloc": "glibc", "keeps_freed": False, "why": f"{MODE_ENV}=system"}
    assert keep["state"]["keeps_freed"] and keep["state"]["mmap_threshold"] == 32 << 20
    # glibc's defaults hand a freed 20 MiB block back to the kernel (mmapped); kept, it stays resident.
    for run in (system, keep):
        before, held, _ = run["resident"]
        assert held - before > 15, run
    assert system["resident"][1] - system["resident"][2] > 15, system
    assert keep["resident"][1] - keep["resident"][2] < 5, keep
    # Warmed-up steps reuse the kept memory (0-100 faults a step measured on a Zen 3). With glibc's
    # defaults it depends on the process's history (645-7,900 a step measured), so it is not asserted.
    assert keep["faults"] < 500, (keep, system)


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
