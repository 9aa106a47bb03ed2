"""Evidence per machine: the machine key, and a machine never seen before adding its evidence beside
the committed evidence without touching another machine's files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_models.system.machine import code_age, machine_key

ROOT = Path(__file__).resolve().parent.parent
ISA = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"]


def test_the_machine_key_names_cpu_family_model_and_isa_class():
    zen4 = {"cpu": "AMD EPYC (family 25, model 17)", "cpu_isa": ISA}
    assert machine_key(zen4) == "AMD-EPYC-family-25-model-17-avx512bf16"
    # Marketing words and clock speeds say nothing about what the CPU computes: left out.
    named = {"cpu": "AMD EPYC 9R14 96-Core Processor (family 25, model 17)", "cpu_isa": ISA}
    assert machine_key(named) == "AMD-EPYC-9R14-family-25-model-17-avx512bf16"
    # Two virtual CPUs with the same generic name are told apart by what they can do.
    generic = "Intel(R) Xeon(R) Processor (family 6, model 143)"
    amx = machine_key({"cpu": generic, "cpu_isa": [*ISA, "amx_bf16", "amx_tile"]})
    avx2 = machine_key({"cpu": generic, "cpu_isa": ["avx2", "fma"]})
    assert amx == "Intel-Xeon-family-6-model-143-amx" and avx2 == "Intel-Xeon-family-6-model-143-avx2"
    assert machine_key({"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz (family 6, model 85)", "cpu_isa": ["avx512f"]}).endswith("-avx512")
    assert machine_key({"cpu": "x", "cpu_isa": []}) == "x-baseline-isa"
    assert machine_key({**zen4, "gpu": "NVIDIA H200"}) == "AMD-EPYC-family-25-model-17-avx512bf16-NVIDIA-H200"


def test_the_committed_evidence_is_filed_by_machine():
    """Every file under reports/machines/<key>/ that names a machine names that one."""
    import json

    for folder in sorted((ROOT / "reports" / "machines").iterdir()):
        for path in folder.rglob("*.json"):
            if "traces" in path.relative_to(folder).parts:
                continue  # profiler traces: not committed (a local profile leaves them), no machine block
            data = json.loads(path.read_text())
            machine = data.get("machine") or (data.get("machine_info") or {}).get("mnist_bench")
            assert machine, path
            assert machine_key(machine) == folder.name, path
    # Nothing a single machine measured lies outside its folder.
    loose = [p.name for p in (ROOT / "reports").iterdir() if p.is_file() and p.suffix == ".json"]
    assert loose == []


FAKE_CPUINFO = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Processor
flags		: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile

"""


@pytest.mark.slow
def test_a_machine_never_seen_adds_its_evidence_beside_the_committed(tmp_path):
    """The README's commands, run from a scratch folder in a copy of the checkout on a machine with a
    new identity: what they write lands in that machine's folder, and git sees no other file change."""
    copy = tmp_path / "checkout"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *step], cwd=copy, check=True, timeout=60)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FAKE_CPUINFO)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MNIST_BENCH_HOME"}
    env |= {"MNIST_BENCH_CPUINFO": str(cpuinfo), "PYTHONPATH": str(copy)}

    def run(*args: str) -> None:
        done = subprocess.run([sys.executable, *args], cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (args, done.stdout[-1500:], done.stderr[-1500:])

    run("-m", "mnist_models", "profile", "--model", "simple", "--warmup", "1", "--active", "2")
    run("-m", "mnist_models", "train", "--model", "simple", "--dataset", "mnist-5k", "--epochs", "1", "--no-latency")
    bench = ["-m", "pytest", str(copy / "bench"), "-q", "--benchmark-only", "-p", "no:cacheprovider"]
    run(*bench, "--rootdir", str(copy), "-k", "test_forward and simple-cpu-eager-fp32-b100]")

    key = "Intel-Xeon-family-6-model-143-amx"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert status and all(line.startswith(f"?? reports/machines/{key}/") for line in status), status
    new = copy / "reports" / "machines" / key
    assert (new / "kernels" / "simple-train-cpu-eager-fp32-b100.json").is_file() and (new / "conv-kernels.md").is_file()
    assert len(list((new / "runs" / "mnist-5k").glob("simple-*.json"))) == 1
    assert (new / "benchmarks-cpu.subset.md").is_file()  # a subset: kept apart (and ignored by git)
    assert "Intel(R) Xeon(R) Processor" in (new / "conv-kernels.md").read_text()


def test_a_kernel_report_is_re_rendered_from_one_machines_summaries(tmp_path, capsys):
    from mnist_models import cli

    zen4 = ROOT / "reports" / "machines" / "AMD-EPYC-family-25-model-17-avx512bf16"
    shutil.copytree(zen4 / "kernels", tmp_path / "kernels")
    assert cli.main(["report", "--kernels", str(tmp_path), "--no-accuracy"]) == 0
    text = (tmp_path / "conv-kernels.md").read_text()
    assert "key `AMD-EPYC-family-25-model-17-avx512bf16`" in text and "different machines" not in text
    assert cli.main(["report", "--no-accuracy"]) == 2 and "--kernels FOLDER" in capsys.readouterr().err


def test_the_index_gives_each_machine_its_verdicts_and_every_link_resolves():
    import re

    from mnist_models.reporting.benchmarks import speedup_cell
    from mnist_models.reporting.index import fastest, render_index

    reports = ROOT / "reports"
    text = render_index(reports, reports / "machines")
    sections = dict(part.split("\n", 1) for part in text.split("\n## ")[1:])
    assert set(sections) == {p.name for p in (reports / "machines").iterdir() if p.is_dir()}
    zen4 = "AMD-EPYC-family-25-model-17-avx512bf16"
    row, base = fastest(reports / "machines" / zen4)["train-step-simple-cpu-b100"]  # from the committed JSON
    line = next(x for x in sections[zen4].splitlines() if "train-step-simple-cpu-b100:" in x)
    assert f"fastest `{row.label}`" in line and f"{speedup_cell(base, row)} eager fp32" in line
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((reports / link).exists() for link in links), [x for x in links if not (reports / x).exists()]


def test_a_figure_is_stale_once_the_code_it_timed_changed(tmp_path):
    """A results row names its commit and whether the timed code changed since (the README once showed
    rows measured before about 60 changed files as if current)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "timed.py").write_text("step = 1\n")
    git("add", "-A")
    git("commit", "-qm", "measured here")
    measured = git("rev-parse", "--short", "HEAD")
    (tmp_path / "report.py").write_text("words = 1\n")
    git("add", "-A")
    git("commit", "-qm", "a report changed")
    assert code_age(measured, ("timed.py",), tmp_path) == "current"
    (tmp_path / "timed.py").write_text("step = 2\n")
    git("commit", "-qam", "the timed code changed")
    assert code_age(measured, ("timed.py",), tmp_path) == "stale"
    assert code_age(f"{measured}+dirty", ("timed.py",), tmp_path) == "dirty"
    assert code_age("0000000", ("timed.py",), tmp_path) == "unknown" and code_age(None) == "unknown"
