"""The CUDA path, checked: the steps of `scripts/gpu-check`, run one after another within a time budget.

On a machine with a CUDA GPU it runs, each step under its own time limit:

1. the tests, CUDA ones included (the slow subprocess tests left out);
2. the quick CUDA benchmark subset (forward and train step at batch 100: eager, channels_last,
   bf16, fp16 + GradScaler, compile, reduce-overhead (CUDA graphs); the matmul ceiling), written to
   reports/benchmarks-cuda.md (+ .json);
3. one profile per net (train step, eager fp32 and the fastest variant of step 2) into
   reports/conv-kernels-cuda.md, naming the cuDNN kernels;
4. per net on fashion-mnist (mnist-5k where fashion-mnist is not installed): one epoch of the seed
   recipe (the seed's DataLoader, eager fp32) and the seed's 15 epochs with the fastest variant of
   step 2 through the tensor loader, records into reports/runs/;
5. a one-GPU nccl run once the project has DDP (`train --nproc`); skipped with the reason before.

Then it prints a summary: each step's status and time, and per net the images/s of every CUDA
variant, the seconds per epoch and the time to reach the seed recipe's accuracies.

Without a GPU (or with --dry-run) it lists the steps and checks that each would start: every
mnist-bench command parses, every pytest selection selects something. Exit status 0 then.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_models.cli import build_parser  # noqa: E402
from mnist_models.core.bench_row import BenchRow, bench_rows  # noqa: E402
from mnist_models.reporting.benchmarks import fastest, load_bench_json  # noqa: E402
from mnist_models.runs.records import RunStore  # noqa: E402
from mnist_models.system.machine import evidence_dir  # noqa: E402

MODELS = ("simple", "deep")
BUDGET_SECONDS = 8 * 60


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


def has_ddp() -> bool:
    return any("--nproc" in a.option_strings for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions)


def plan(reports: Path, bench: dict | None, dataset: str) -> list[Step]:
    """Every step, in order; steps 3 and 4 use the fastest variant that step 2 measured (eager fp32 before that)."""
    kernels, runs = reports / "kernels-cuda", reports / "runs"
    steps = [
        Step("tests (CUDA included)", pytest("-q", "tests", "-m", "cuda or not slow", "-p", "no:cacheprovider"), 240),
        Step(
            "quick CUDA benchmarks",
            pytest(
                "-q",
                "bench",
                "--benchmark-only",
                "-m",
                "cuda and quick",
                "-p",
                "no:cacheprovider",
                "--bench-report",
                str(reports / "benchmarks-cuda.md"),
            ),
            240,
        ),
    ]
    for model in MODELS:
        best = fastest(bench, "train-step", model, "cuda", 100) if bench else None
        for flags in {(): [], tuple(variant_flags(best)): variant_flags(best)}.values():
            steps.append(
                Step(
                    f"profile {model} {' '.join(flags) or 'eager fp32'}",
                    mnist_bench(
                        "profile",
                        "--model",
                        model,
                        "--device",
                        "cuda",
                        *flags,
                        "--out",
                        str(reports / "traces"),
                        "--summary-dir",
                        str(kernels),
                        "--report",
                        str(reports / "conv-kernels-cuda.md"),
                    ),
                    120,
                )
            )
    for model in MODELS:
        best = fastest(bench, "train-step", model, "cuda", 100) if bench else None
        common = [
            "--model",
            model,
            "--dataset",
            dataset,
            "--device",
            "cuda",
            "--runs-dir",
            str(runs),
            "--no-progress",
            "--overwrite",
        ]
        steps.append(Step(f"{model}: one epoch, seed recipe", mnist_bench("train", *common, "--epochs", "1"), 180))
        steps.append(
            Step(
                f"{model}: 15 epochs, fastest variant",
                mnist_bench("train", *common, "--loader", "tensor", *variant_flags(best)),
                240,
            )
        )
    if has_ddp():
        steps.append(
            Step(
                "DDP, one GPU, nccl",
                mnist_bench(
                    "train",
                    "--nproc",
                    "1",
                    "--backend",
                    "nccl",
                    "--model",
                    "simple",
                    "--dataset",
                    dataset,
                    "--epochs",
                    "1",
                    "--device",
                    "cuda",
                    "--runs-dir",
                    str(runs / "ddp"),
                    "--no-progress",
                    "--overwrite",
                ),
                180,
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


def run(step: Step, left: float) -> tuple[str, float]:
    limit = max(1, min(step.timeout, int(left)))
    print(f"\n== {step.name}: {shlex.join(step.argv[1:])} (limit {limit} s)", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, timeout=limit)
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"TIMED OUT after {limit} s"
    return status, time.perf_counter() - start


def summary(results: list[tuple[Step, str, float]], reports: Path, dataset: str) -> str:
    lines = ["", "== gpu-check summary", ""]
    lines += [f"{status:24s} {seconds:7.1f} s  {step.name}" for step, status, seconds in results]
    bench_json = reports / "benchmarks-cuda.json"
    if bench_json.exists():
        data = load_bench_json(bench_json)
        lines += ["", "images/s per CUDA variant (median, batch 100):"]
        for row in sorted(bench_rows(data), key=lambda r: r.name):
            if row.images_per_s and row.variant.device == "cuda":
                lines.append(f"  {row.suite + ' ' + row.label:60s} {row.images_per_s:>14,.0f}")
    try:
        records, _ = RunStore(reports / "runs").load_all()
    except Exception:  # no runs folder yet: nothing to summarise
        records = []
    for r in (r for r in records if r.device == "cuda" and r.dataset.name == dataset):
        line = f"  {r.name}: {r.train_seconds / len(r.epochs):.2f} s/epoch, accuracy {r.test_accuracy:.4f}"
        for target in (0.9874, 0.9838):  # the seed's printed accuracies (MNIST, raw-pixel evaluation)
            reached = next(
                (
                    sum(e.seconds for e in r.epochs[: i + 1])
                    for i, e in enumerate(r.epochs)
                    if e.test_accuracy is not None and e.test_accuracy >= target
                ),
                None,
            )
            line += f"; to {target}: " + (f"{reached:.1f} s" if reached is not None else "not reached")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list and check the steps without running them")
    parser.add_argument(
        "--reports",
        default=str(evidence_dir()),
        help=f"where reports, records and traces go (default: this machine's evidence folder, {evidence_dir()})",
    )
    args = parser.parse_args(argv)
    import torch

    reports = ROOT / args.reports
    gpu = torch.cuda.is_available()
    if args.dry_run or not gpu:
        why = "--dry-run" if gpu else "no CUDA GPU is visible to torch on this machine"
        print(f"gpu-check: {why}; a dry run. On a GPU machine it would run, within about {BUDGET_SECONDS // 60} minutes:")
        for i, step in enumerate(plan(reports, None, "fashion-mnist"), 1):
            print(f"{i:2d}. {step.name} (limit {step.timeout} s): {shlex.join(step.argv[1:])}\n    check: {check(step)}")
        if not has_ddp():
            print("    (a one-GPU nccl DDP run joins these once `mnist-bench train --nproc` exists)")
        print("steps 3-4 use the fastest CUDA train-step variant measured in step 2")
        return 0

    print(f"gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    dataset = dataset_here()
    started, results = time.perf_counter(), []
    steps = plan(reports, None, dataset)
    done = 0
    while done < len(steps):
        step = steps[done]
        left = BUDGET_SECONDS - (time.perf_counter() - started)
        if left <= 5:
            results += [(s, "NOT RUN (time budget spent)", 0.0) for s in steps[done:]]
            break
        status, seconds = run(step, left)
        results.append((step, status, seconds))
        done += 1
        if step.name == "quick CUDA benchmarks" and (reports / "benchmarks-cuda.json").exists():
            steps = steps[:done] + plan(reports, load_bench_json(reports / "benchmarks-cuda.json"), dataset)[done:]
    print(summary(results, reports, dataset))
    print(json.dumps({"steps": len(results), "ok": sum(s == "ok" for _, s, _ in results)}))
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
