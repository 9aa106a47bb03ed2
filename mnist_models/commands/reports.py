"""The commands that render evidence: profile (a trace and the kernel report) and report (every markdown report)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

from ..core.nets import MODELS
from ..core.variants import Variant
from ..profiling.profiler import DEFAULT_KERNEL_REPORT, DEFAULT_SUMMARY_DIR, ProfileConfig
from ..runs.config import TrainConfig
from ..system.errors import UsageError
from ..system.paths import MACHINES_DIR, REPORTS_DIR
from . import flags


def _profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="profile one net + variant with torch.profiler: TensorBoard trace and conv-kernel report",
        description="Profile a train step (or a forward pass) with a wait/warmup/active schedule, recording shapes, FLOPs "
        "and memory. Writes a TensorBoard trace (PyTorch Profiler tab; also opens in ui.perfetto.dev), a JSON "
        "summary, and rebuilds the markdown conv-kernel report from all summaries.",
    )
    d = functools.partial(flags.default, ProfileConfig)
    p.add_argument("--model", default=d("model"), choices=list(MODELS), help=f"which net (default: {d('model')})")
    p.add_argument(
        "--mode",
        default=d("mode"),
        choices=["train", "forward"],
        help=f"a whole train step or forward only (default: {d('mode')})",
    )
    p.add_argument(
        "--batch-size", type=flags.positive_int, default=d("batch_size"), help=f"batch size (default: {d('batch_size')})"
    )
    p.add_argument(
        "--wait",
        type=flags.non_negative_int,
        default=d("wait"),
        help=f"profiler schedule: steps skipped first (default: {d('wait')})",
    )
    p.add_argument(
        "--warmup",
        type=flags.non_negative_int,
        default=d("warmup"),
        help=f"profiler schedule: steps traced but discarded (default: {d('warmup')})",
    )
    p.add_argument(
        "--active",
        type=flags.positive_int,
        default=d("active"),
        help=f"profiler schedule: steps recorded (default: {d('active')})",
    )
    p.add_argument(
        "--out",
        default=d("out_dir"),
        help=f"TensorBoard log directory; one run folder per model+variant (default: {d('out_dir')})",
    )
    p.add_argument(
        "--summary-dir",
        default=str(DEFAULT_SUMMARY_DIR),
        help=f"where per-run JSON summaries go (default: {DEFAULT_SUMMARY_DIR})",
    )
    p.add_argument(
        "--report", default=str(DEFAULT_KERNEL_REPORT), help=f"the markdown kernel report (default: {DEFAULT_KERNEL_REPORT})"
    )
    p.add_argument(
        "--nproc",
        type=flags.positive_int,
        default=None,
        help="profile a DDP train step on this many ranks (torchrun's launcher); one trace per rank (default: one process)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="a variant spec as train, sweep and ab take it (e.g. eager-bf16-cl-fast; a loader token is ignored), or "
        "'best': what mnist-bench tune stored for this machine (default: the switches below)",
    )
    flags.add_variant_flags(p)
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from ..profiling.profiler import load_summaries, profile, save_summary
    from ..reporting.kernels import write_kernel_report
    from ..scale import distributed
    from ..scale.job import open_job

    launched, rank = distributed.launch_or_join(args.nproc, args.argv)
    if launched:
        return 0
    variant = flags.variant(args)
    if args.variant:  # the same vocabulary as train, sweep and ab: a spec, or best (its loader does not matter here)
        choice = flags.chosen_variant(argparse.Namespace(**(vars(args) | {"loader": flags.default(TrainConfig, "loader")})))
        variant = dataclasses.replace(variant, **{k: v for k, v in choice.items() if k in Variant.VARIANT_FIELDS})
        args.threads = args.threads or choice.get("threads")
    config = ProfileConfig(
        model=args.model,
        mode=args.mode,
        variant=variant,
        batch_size=args.batch_size,
        wait=args.wait,
        warmup=args.warmup,
        active=args.active,
        out_dir=args.out,
        threads=args.threads,
        ranks=rank.world_size if rank else 1,
    )
    if rank and config.mode != "train":
        raise UsageError("profile --nproc profiles DDP train steps; --mode forward has nothing to distribute")
    with open_job(rank, "auto", config.variant.resolved().device) as job:
        job.agree("profile config", dataclasses.asdict(config))
        run_dir, summary = profile(config, job=job)
    if summary is None:
        return 0  # not rank 0: its trace is written; rank 0 writes the summary and report
    save_summary(summary, Path(args.summary_dir))
    report = Path(args.report)
    write_kernel_report(report, load_summaries(Path(args.summary_dir)), "mnist-bench profile ... (one run per section)")
    print(f"trace: {run_dir}  (tensorboard --logdir {args.out})")
    roofline = summary.get("roofline")
    against = f", {100 * roofline['step']['roofline_ms'] / summary['step_ms']:.0f}% of its roofline" if roofline else ""
    print(
        f"profiled step {summary['step_ms']:.1f} ms, convolutions {100 * summary['conv_share']:.0f}%{against}; kernel report: {report}"
    )
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="build reports/accuracy-vs-cost.md from run records; rebuild a benchmark report from its JSON",
        description="Render markdown reports from stored data: the accuracy-vs-cost report (with PNG plots) from run "
        "records, and optionally a benchmark report from a pytest-benchmark JSON (--benchmark-json, "
        "--benchmark-autosave, or the JSON written beside reports/benchmarks-*.md).",
    )
    # None, not the default path, so that a flag --no-accuracy would ignore can be refused.
    p.add_argument("--runs-dir", default=None, help=f"run records to report on (default: every machine's, {MACHINES_DIR}/*/runs)")
    p.add_argument(
        "--out",
        default=None,
        help=f"accuracy-vs-cost markdown; PNG plots go beside it (default: {REPORTS_DIR / 'accuracy-vs-cost.md'})",
    )
    p.add_argument(
        "--bench-json",
        default=None,
        help=f"a pytest-benchmark JSON file (default: each machine's own, {MACHINES_DIR}/<machine>/benchmarks-*.json)",
    )
    p.add_argument("--bench-out", default=None, help="also render the benchmark report from --bench-json to this markdown path")
    p.add_argument(
        "--kernels",
        default=None,
        metavar="FOLDER",
        help="also re-render FOLDER/conv-kernels.md from the profile summaries in FOLDER/kernels (a machine's folder)",
    )
    p.add_argument(
        "--no-accuracy", action="store_true", help="only the benchmark report (--bench-json, --bench-out) or --kernels"
    )
    p.set_defaults(func=cmd_report)


def _check_report_flags(args: argparse.Namespace) -> None:
    """Refuse combinations in which a flag would do nothing, saying what does the job instead."""
    if args.bench_out and not args.bench_json:
        raise UsageError(
            "--bench-out renders a benchmark report from --bench-json FILE, which is missing "
            "(a benchmark session writes its own report: pytest bench --benchmark-only --bench-report PATH)"
        )
    if args.no_accuracy:
        if not args.bench_out and not args.kernels:
            raise UsageError(
                "--no-accuracy leaves nothing to do: add --bench-json FILE --bench-out OUT.md for a benchmark report, "
                "or --kernels FOLDER for a kernel report"
            )
        ignored = [flag for flag, value in (("--runs-dir", args.runs_dir), ("--out", args.out)) if value is not None]
        if ignored:
            raise UsageError(f"{' and '.join(ignored)} belong to the accuracy report, which --no-accuracy leaves out")


def cmd_report(args: argparse.Namespace) -> int:
    """The accuracy-vs-cost report from stored runs; and/or a benchmark report from a saved JSON."""
    from ..reporting.publish import publish

    _check_report_flags(args)
    publish(args.bench_json, args.bench_out, args.kernels, not args.no_accuracy, args.runs_dir, args.out)
    return 0


def register(sub) -> None:
    """Add this module's commands to the `mnist-bench` parser."""
    _profile_parser(sub)
    _report_parser(sub)
