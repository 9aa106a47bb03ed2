"""The CUDA path, checked in one command within a stated budget: the steps of `scripts/gpu-check`.

    scripts/gpu-check --out DIR          # on a machine with a CUDA GPU: run every step
    scripts/gpu-check --dry-run          # anywhere: the plan, each step checked to start, the CUDA code on CPU

On a GPU machine it runs, each step under its own time limit, all within BUDGET_SECONDS:

1. the CUDA tests (`pytest -m cuda`);
2. the quick CUDA benchmark subset without torch.compile (forward and train step at batch 100:
   eager, channels_last, bf16, fp16 + GradScaler; the matmul ceiling): cold compiles would spend
   the budget; `pytest bench --benchmark-only -m cuda` runs them all when there is time;
3. one profile per net (train step, eager fp32), naming the cuDNN kernels;
4. one short epoch per loader (the seed's DataLoader, the tensor loader), simple net;
5. a one-rank nccl DDP run.

A step that runs out of time is sent Ctrl-C first (the benchmark session then writes a partial
report), then killed; what it wrote stays. Everything goes under --out, laid out as the project's
per-machine evidence (OUT/machines/<machine>/...), with the summary there too (gpu-check.md), so the
folder can be copied into reports/ and committed. The folder must be new or empty: a stale JSON of
an earlier run is never summarised as this one's.

A GPU that exists but that torch cannot use (a CPU-only wheel, a driver older than the wheel needs,
a hidden device) is an error, exit 1: the check never passes by checking nothing. A machine with no
GPU at all exits 2 unless --dry-run was asked for. The dry run (exit 0) lists the steps with their
limits, checks that each would start (every command parses, every pytest selection selects), and
runs the CUDA branches that a CPU can run (tests/test_cuda_paths.py: the profile's kernel
accounting, the numerics flags, identities, the compile reset).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_models.cli import build_parser  # noqa: E402
from mnist_models.core.bench_row import BenchRow, bench_rows  # noqa: E402
from mnist_models.core.targets import target_for  # noqa: E402
from mnist_models.reporting.benchmarks import load_bench_json  # noqa: E402
from mnist_models.runs.records import RunStore  # noqa: E402
from mnist_models.system import atomic  # noqa: E402
from mnist_models.system.machine import machine_key, this_machine  # noqa: E402

MODELS = ("simple", "deep")
BUDGET_SECONDS = 8 * 60  # the lent GPU machine's time, less its start: every step's limit fits inside it
GRACE_SECONDS = 20  # after Ctrl-C, how long a step has to write its partial results


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout: int  # seconds

    @property
    def mnist_bench(self) -> bool:
        return self.argv[:3] == [sys.executable, "-m", "mnist_models.cli"]


def mnist_bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_models.cli", *args]


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def variant_flags(row: BenchRow | None) -> list[str]:
    """mnist-bench flags for a benchmark's variant; eager fp32 when there is none."""
    if row is None:
        return []
    v = row.variant
    flags = ["--compile", v.compile, "--precision", v.precision]
    return flags + (["--channels-last"] if v.channels_last else []) + (["--fast"] if v.fast else [])


def dataset_here() -> str:
    from mnist_models.core.data import load_dataset
    from mnist_models.system.errors import DataError

    try:
        load_dataset("fashion-mnist", download=False)
        return "fashion-mnist"
    except DataError:
        return "mnist-5k"


def plan(evidence: Path, dataset: str) -> list[Step]:
    """Every step, in order, its limit included; the limits add up to at most BUDGET_SECONDS."""
    runs = evidence / "runs"
    steps = [
        Step("CUDA tests", pytest("-q", "tests", "-m", "cuda", "-p", "no:cacheprovider"), 60),
        Step(
            "quick CUDA benchmarks (no compile)",
            pytest(
                "-q",
                "bench",
                "--benchmark-only",
                "-m",
                "cuda and quick and not compile",
                "-p",
                "no:cacheprovider",
                "--bench-report",
                str(evidence / "benchmarks-cuda.md"),
            ),
            150,
        ),
    ]
    for model in MODELS:
        steps.append(
            Step(
                f"profile {model} eager fp32",
                mnist_bench(
                    "profile",
                    "--model",
                    model,
                    "--device",
                    "cuda",
                    "--out",
                    str(evidence / "traces"),
                    "--summary-dir",
                    str(evidence / "kernels"),
                    "--report",
                    str(evidence / "conv-kernels.md"),
                ),
                40,
            )
        )
    common = ["--model", "simple", "--dataset", dataset, "--device", "cuda", "--epochs", "1", "--no-progress"]
    for loader in ("seed", "tensor"):
        steps.append(
            Step(
                f"simple: one epoch, {loader} loader",
                mnist_bench("train", *common, "--loader", loader, "--runs-dir", str(runs)),
                45,
            )
        )
    steps.append(
        Step(
            "DDP, one rank, nccl",
            mnist_bench("train", "--nproc", "1", "--backend", "nccl", *common, "--runs-dir", str(runs / "ddp")),
            60,
        )
    )
    return steps


def check(step: Step) -> str:
    """Would the step start? mnist-bench commands must parse; pytest selections must select something."""
    if step.mnist_bench:
        build_parser().parse_args(step.argv[3:])  # exits 2 with a one-line error if not
        return "command parses"
    collected = subprocess.run([*step.argv, "--collect-only"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    last = (collected.stdout.strip().splitlines() or ["?"])[-1]
    if collected.returncode != 0 or "collected" not in last:
        raise SystemExit(f"gpu-check: {step.name}: the selection does not collect: {last}")
    return last


def run(step: Step, left: float, log: Path) -> tuple[str, float]:
    """Run a step within min(its limit, what is left); past it, Ctrl-C, then a kill. Its output goes to `log`."""
    limit = max(1, min(step.timeout, int(left)))
    print(f"\n== {step.name}: {shlex.join(step.argv[1:])} (limit {limit} s)", flush=True)
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n== {step.name}: {shlex.join(step.argv)}\n")
        out.flush()
        proc = subprocess.Popen(step.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"FAILED (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # the benchmark session writes its partial report on Ctrl-C
            try:
                proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            status = f"TIMED OUT after {limit} s (partial results kept)"
    return status, time.perf_counter() - start


def gpu_state() -> tuple[bool, str]:
    """(usable, what is there): torch's view of the GPU, against the device files and the driver."""
    import torch

    if torch.cuda.is_available():
        return True, f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if _which("nvidia-smi") else None
    seen = devices or (smi is not None and smi.returncode == 0 and smi.stdout.strip())
    if seen:
        why = "a CPU-only torch wheel" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        return (
            False,
            f"a GPU is here ({', '.join(devices) or smi.stdout.strip().splitlines()[0]}) but torch cannot use it ({why}; a driver older than that, or a hidden device)",
        )
    return False, ""


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def epoch_lines(records, dataset: str) -> list[str]:
    """Per CUDA run: seconds per epoch (the first epoch pays cuDNN's autotuning and any compile, so it is
    named apart) and the time to this net's target on this dataset (core/targets.py)."""
    lines = []
    for r in (r for r in records if r.device == "cuda" and r.dataset.name == dataset):
        first = r.epochs[0].seconds
        rest = [e.seconds for e in r.epochs[1:]]
        per_epoch = (
            f"{sum(rest) / len(rest):.2f} s/epoch after the first ({first:.2f} s)"
            if rest
            else f"{first:.2f} s, its only epoch (autotuning included)"
        )
        target = target_for(dataset, r.config.model).accuracy
        elapsed, reached = 0.0, None
        for e in r.epochs:
            elapsed += e.seconds
            if e.test_accuracy is not None and e.test_accuracy >= target and reached is None:
                reached = elapsed
        to_target = f"{reached:.1f} s" if reached is not None else f"not reached in {len(r.epochs)} epoch(s)"
        lines.append(f"- `{r.name}`: {per_epoch}; accuracy {r.test_accuracy:.4f}; to {target:.2%}: {to_target}")
    return lines


def summary(results: list[tuple[Step, str, float]], evidence: Path, dataset: str, gpu: str, budget_used: float) -> str:
    out = [
        "# GPU check",
        "",
        f"Generated by `scripts/gpu-check --out ...`; do not edit by hand. GPU: {gpu}. Dataset: {dataset}.",
        f"Budget {BUDGET_SECONDS} s, used {budget_used:.0f} s.",
        "",
        "| step | status | seconds |",
        "|---|---|---:|",
    ]
    out += [f"| {step.name} | {status} | {seconds:.1f} |" for step, status, seconds in results]
    bench_json = evidence / "benchmarks-cuda.json"
    if bench_json.exists():
        rows = [r for r in bench_rows(load_bench_json(bench_json)) if r.images_per_s and r.variant.device == "cuda"]
        out += ["", "## Images/s per CUDA variant (median, this run)", ""]
        out += [f"- {r.suite} `{r.label}`: {r.images_per_s:,.0f}" for r in sorted(rows, key=lambda r: r.name)]
    try:
        records, _ = RunStore(evidence / "runs").load_all()
    except Exception:  # noqa: BLE001  no runs folder: nothing to summarise
        records = []
    epochs = epoch_lines(records, dataset)
    if epochs:
        out += ["", "## Epochs", "", *epochs]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list and check the steps without running them")
    parser.add_argument("--out", default=None, help="a new or empty folder for every result (required for a real run)")
    args = parser.parse_args(argv)
    usable, gpu = gpu_state()
    out = Path(args.out or "gpu-check-out").resolve()
    evidence = out / "machines" / machine_key(this_machine())
    if args.dry_run:
        state = f"GPU: {gpu}" if gpu else "no GPU here"
        print(f"gpu-check: a dry run ({state}); budget {BUDGET_SECONDS} s; output folder {out}")
        print(f"evidence would go to {evidence} (on the GPU machine its key names the GPU)")
        total = 0
        for i, step in enumerate(plan(evidence, "fashion-mnist"), 1):
            total += step.timeout
            print(f"{i:2d}. {step.name} (limit {step.timeout} s): {shlex.join(step.argv[1:])}\n    check: {check(step)}")
        print(f"the limits add up to {total} s of the {BUDGET_SECONDS} s budget")
        cpu_side = subprocess.run(
            pytest("-q", "tests/test_cuda_paths.py", "-p", "no:cacheprovider"), cwd=ROOT, capture_output=True, text=True
        )
        last = (cpu_side.stdout.strip().splitlines() or ["?"])[-1]
        print(f"the CUDA branches a CPU can run (tests/test_cuda_paths.py): {last}")
        return 0 if cpu_side.returncode == 0 else 1
    if not usable:
        if gpu:
            print(f"gpu-check: error: {gpu}", file=sys.stderr)
            return 1
        print(
            "gpu-check: error: no GPU on this machine: nothing was checked (scripts/gpu-check --dry-run shows the plan)",
            file=sys.stderr,
        )
        return 2
    if args.out is None:
        print("gpu-check: error: give --out DIR, a new or empty folder for the results", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"gpu-check: error: {out} is not empty: results of an earlier run would be read as this one's", file=sys.stderr)
        return 2
    evidence.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {gpu}; budget {BUDGET_SECONDS} s; results in {evidence}")
    dataset = dataset_here()
    started, results = time.perf_counter(), []
    log = out / "gpu-check.log"
    for i, step in enumerate(steps := plan(evidence, dataset)):
        left = BUDGET_SECONDS - (time.perf_counter() - started)
        if left <= 5:
            results += [(s, "NOT RUN (time budget spent)", 0.0) for s in steps[i:]]
            break
        status, seconds = run(step, left, log)
        results.append((step, status, seconds))
        print(f"   {status} ({seconds:.1f} s)", flush=True)
    text = summary(results, evidence, dataset, gpu, time.perf_counter() - started)
    atomic.write_text(evidence / "gpu-check.md", text)
    print(text)
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
