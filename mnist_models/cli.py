"""`mnist-bench`: train | sweep | profile | report | data.

argparse lives only here: each subcommand builds the library's typed config and calls it. Errors
a user can cause (MnistBenchError) print as one line and exit non-zero; nothing half-written stays.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .core.data import DATASETS, DEFAULT_ROOT, LOADERS
from .core.nets import MODELS
from .core.variants import COMPILE_MODES, DEVICES, PRECISIONS, Variant, parse_tag
from .profiling.profiler import DEFAULT_KERNEL_REPORT, DEFAULT_SUMMARY_DIR, ProfileConfig
from .runs.config import BACKENDS, MAX_SEED, MAX_THREADS_PER_CPU, SEED, TrainConfig
from .runs.records import DEFAULT_RUNS_DIR
from .runs.tune import DEFAULT_BUDGET_S, DEFAULT_TUNE_DIR
from .system.allocator import keep_freed_memory
from .system.errors import Interrupted, MnistBenchError, UsageError
from .system.paths import MACHINES_DIR, REPORTS_DIR


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus a pointer to --help), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], else a one-line error saying the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            if high is None:
                raise argparse.ArgumentTypeError(f"must be {'positive' if low == 1 else f'at least {low}'}, got {value}")
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}{what}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1)
_non_negative_int = _whole_number(0)
_seed = _whole_number(0, MAX_SEED, " (torch.manual_seed's 64-bit range)")


def _default(cls, name: str):
    """A flag's default, read from the config dataclass that owns it (typed once, there)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _add_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The switches shared by train, sweep and profile (docs/DESIGN.md, Variants); `_variant` reads them back."""
    d = functools.partial(_default, Variant)
    device = _default(TrainConfig, "variant").device  # a config's default variant leaves the device to the run: auto
    parser.add_argument(
        "--device", default=device, choices=DEVICES, help=f"auto picks cuda when a GPU is visible (default: {device})"
    )
    parser.add_argument(
        "--compile",
        default=d("compile"),
        choices=COMPILE_MODES,
        help=f"torch.compile mode, or off for eager (default: {d('compile')})",
    )
    parser.add_argument(
        "--precision",
        default=d("precision"),
        choices=PRECISIONS,
        help=f"fp32, bf16 autocast, or fp16 autocast + GradScaler (cuda only) (default: {d('precision')})",
    )
    parser.add_argument("--channels-last", action="store_true", help="run the convolutions in NHWC (channels_last) memory format")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="the fast training path: max-pool before ReLU, in-place ReLU, fused Adam (the same function and weights)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help=f"torch intra-op threads, at most {MAX_THREADS_PER_CPU}x the logical CPUs (default: torch's choice)",
    )


def _variant(args: argparse.Namespace) -> Variant:
    """The variant the flags name (its device may still be 'auto': runs resolve it when they start)."""
    return Variant(args.device, args.compile, args.precision, args.channels_last, args.fast)


def _add_data_flags(parser: argparse.ArgumentParser, default_dataset: str = _default(TrainConfig, "dataset")) -> None:
    parser.add_argument(
        "--dataset",
        default=default_dataset,
        choices=DATASETS,
        help=f"mnist needs internet or files in the data root; mnist-5k and fashion-mnist work offline (default: {default_dataset})",
    )
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_ROOT),
        help=f"where torchvision-layout datasets live or are downloaded (default: {DEFAULT_ROOT})",
    )


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    d = functools.partial(_default, TrainConfig)
    parser.add_argument(
        "--epochs", type=_positive_int, default=d("epochs"), help=f"training epochs (default: {d('epochs')}, the seed's)"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d("batch_size"),
        help=f"training batch size (default: {d('batch_size')}, the seed's)",
    )
    parser.add_argument("--lr", type=float, default=d("lr"), help=f"Adam learning rate (default: {d('lr')}, the seed's)")
    parser.add_argument(
        "--to-target",
        action="store_true",
        help="time to accuracy: stop at the first evaluation that reaches the net's target on this dataset "
        "(mnist-bench targets lists them); the budget is the recipe's epochs",
    )
    parser.add_argument(
        "--loader",
        default=d("loader"),
        choices=LOADERS,
        help=f"seed: the seed's DataLoader over ToTensor; tensor: batches from in-memory tensors (default: {d('loader')})",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=_positive_int,
        default=d("eval_batch_size"),
        help=f"test-set batch size (default: {d('eval_batch_size')})",
    )
    parser.add_argument(
        "--runs-dir", default=str(DEFAULT_RUNS_DIR), help=f"where run records (JSON) and weights go (default: {DEFAULT_RUNS_DIR})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the forward-latency measurement after training (a few seconds; reports then show '-')",
    )


def _recipe_flags(args: argparse.Namespace) -> dict:
    """--recipe SPEC as config fields; it names the epochs, batch and lr, so those flags must stay at their defaults."""
    spec = getattr(args, "recipe", None)
    if not spec:
        return {}
    from .core.recipes import Recipe

    given = [
        flag
        for flag, name in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"))
        if getattr(args, name) != _default(TrainConfig, name)
    ]
    if given:
        raise UsageError(f"--recipe sets the recipe; leave out {', '.join(given)} (or name it in the spec)")
    if spec == "best":
        from .runs.recipe_search import best_recipe

        recipe = best_recipe(args.dataset, getattr(args, "model", _default(TrainConfig, "model")))
    else:
        recipe = Recipe.parse(spec)
    return dict(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)


def _train_config(args: argparse.Namespace, **overrides) -> TrainConfig:
    fields = dict(
        model=getattr(args, "model", _default(TrainConfig, "model")),
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=getattr(args, "seed", _default(TrainConfig, "seed")),
        variant=_variant(args),
        loader=args.loader,
        eval_batch_size=args.eval_batch_size,
        threads=args.threads,
        measure_latency=not args.no_latency,
    )
    config = TrainConfig(**(fields | _recipe_flags(args) | overrides))
    return config.to_target() if args.to_target and hasattr(args, "model") else config  # a sweep: per net


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def cmd_train(args: argparse.Namespace) -> int:
    from .runs.records import RunStore
    from .runs.train import train_and_store
    from .scale import distributed
    from .system.machine import busy_warning

    launched, rank = distributed.launch_or_join(args.nproc, args.argv)
    if launched:
        return 0
    world = rank.world_size if rank else 1
    batch = {"batch_size": args.per_rank_batch * world} if args.per_rank_batch else {}
    config = _train_config(args, ranks=world, backend=args.backend, **batch).with_choice(_chosen_variant(args))
    record, path = train_and_store(
        config,
        RunStore(args.runs_dir),
        overwrite=args.overwrite,
        progress=_show_progress(args),
        rank=rank,
        log=(lambda line: print(line, file=sys.stderr)) if args.json else print,  # --json: stdout holds the JSON alone
    )
    if record is None:
        return 0  # not rank 0: rank 0 writes the record
    warning = busy_warning(record.busy_before_start)
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps({"record_path": str(path), **record.to_json()}))
        return 0
    print(f"Accuracy: {record.test_accuracy:.4f} (inputs scaled to [0, 1], as in training)")
    print(f"Seed-style accuracy: {record.seed_style_accuracy:.4f} (raw 0..255 inputs, as the seed evaluated)")
    print(f"{record.train_seconds:.1f} s training, {record.train_images_per_second:.0f} images/s; record: {path}")
    return 0


def _chosen_variant(args: argparse.Namespace) -> dict:
    """train --variant SPEC|best: the variant's switches (and, for best, the tuned thread count)."""
    if not args.variant:
        return {}
    from .runs.sweep import spec_choice

    switches = {
        "--loader": args.loader != _default(TrainConfig, "loader"),
        "--compile": args.compile != _default(Variant, "compile"),
        "--precision": args.precision != _default(Variant, "precision"),
        "--channels-last": args.channels_last,
        "--fast": args.fast,
    }
    both = [flag for flag, given in switches.items() if given]
    if both:
        raise UsageError(f"--variant sets the variant; leave out {', '.join(both)} (or name it in the spec)")
    return spec_choice(args.variant, args.model)


def cmd_tune(args: argparse.Namespace) -> int:
    from .runs.tune import save_tuning, tune

    result = tune(args.models, budget_s=args.budget, with_compile=args.with_compile)
    path = save_tuning(result, Path(args.out_dir))
    print(f"\ntuned in {result.seconds:.0f} s ({len(result.steps)} step and {len(result.epochs)} epoch timings)")
    for line in result.skipped:
        print(f"skipped: {line}")
    if result.unmeasured:
        print(f"not measured within --budget {args.budget:g} s: {len(result.unmeasured)} candidates")
    for model, best in result.best.items():
        ranking = sorted((n for n in result.epochs if n.startswith(f"{model}-")), key=result.epochs.get)
        print(f"\n{model}: epochs of mnist-5k, fastest first")
        for name in ranking:
            print(f"  {name:45s} {result.epochs[name]:6.2f} s")
        print(f"  {'the seed pipeline (seed-eager-fp32)':45s} {result.reference[model]:6.2f} s")
        print(f"decided: {result.decisions[model]}")
        print(
            f"best for {model}: {best.spec} with {best.threads} thread(s); the seed pipeline's epoch over its epoch, "
            f"interleaved: {result.speedups[model]} (mnist-bench train --model {model} --variant best)"
        )
    print(f"\nstored in {path} (report: {path.with_suffix('.md')})")
    return 0


def cmd_recipe_search(args: argparse.Namespace) -> int:
    from .core.recipes import Recipe
    from .runs.recipe_search import search, store_result
    from .runs.sweep import spec_choice

    candidates = [Recipe.parse(spec) for spec in args.recipes]
    base = _train_config(args).with_choice(spec_choice(args.variant, args.model))
    from .system.atomic import ensure_writable_dir

    ensure_writable_dir(Path(args.runs_dir))
    train_round = None
    if args.cluster == "ray":
        from .runs.cluster import DEFAULT_MAX_RETRIES, cluster_address, run_cluster_sweep

        def train_round(configs):
            return run_cluster_sweep(
                configs,
                Path(args.runs_dir),
                address=cluster_address(args.address),
                max_retries=DEFAULT_MAX_RETRIES,
                progress=False,
            )

    result = search(base, candidates, tuple(args.seeds), Path(args.runs_dir), args.budget, train_round=train_round)
    path = store_result(Path(args.out), args.dataset, args.model, result)
    if result["best"] is None:
        print(f"no recipe reached the target on every seed it ran ({result['seconds']:.0f} s searched); stored in {path}")
        return 1
    print(
        f"best recipe for {args.model} on {args.dataset}: {result['best']} ({result['best_seeds_run']} seed(s) run; "
        f"{result['seconds']:.0f} s searched); stored in {path}. Scores: mnist-bench report (time-to-accuracy.md); "
        f"use it: mnist-bench train --model {args.model} --dataset {args.dataset} --recipe best --variant {args.variant}"
    )
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .core.targets import TARGETS

    for (dataset, model), target in TARGETS.items():
        print(f"{dataset:14s} {model:7s} {target.accuracy:.2%}  {target.source}")
    return 0


def _ab_side(args: argparse.Namespace, label: str, spec: str, source: Path | None = None):
    from .runs.ab import Side
    from .system.paths import SOURCE_ROOT

    parse_tag(spec, ("compile", "precision", "channels_last", "fast"))  # one line for a bad spec, before any process
    return Side(label, args.model, spec, source or SOURCE_ROOT, args.threads)


def cmd_ab(args: argparse.Namespace) -> int:
    """Two variants or two commits, interleaved; with --gate, exit 1 when B is slower beyond noise."""
    from .runs.ab import DEFAULT_ROUNDS, GATE_ROUNDS, check_rounds, checkout_of, compare, threshold_for

    if bool(args.commits) == bool(args.b):
        raise UsageError("give --b SPEC (two variants) or --commits A B (two commits), one of the two")
    if args.rounds is None:
        args.rounds = GATE_ROUNDS if args.gate else DEFAULT_ROUNDS
    warning = check_rounds(args.rounds, args.gate)
    if warning:
        print(warning, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.commits:
            sources = [stack.enter_context(checkout_of(rev)) for rev in args.commits]
            a = _ab_side(args, f"{args.commits[0]} {args.a}", args.a, sources[0])
            b = _ab_side(args, f"{args.commits[1]} {args.a}", args.a, sources[1])
        else:
            a, b = _ab_side(args, args.a, args.a), _ab_side(args, args.b, args.b)
        threshold, source = (args.threshold, "--threshold") if args.threshold is not None else threshold_for(a.benchmark)
        print(f"A: {a.label}\nB: {b.label}\n{args.rounds} interleaved rounds of {args.steps} {args.model} train steps each")
        ratio = compare(a, b, args.rounds, args.steps)
        verdict = ratio.verdict(threshold)
        print(f"B / A = {ratio}: {verdict} (threshold {100 * threshold:.1f}%, from {source})")
        if args.gate and verdict == "slower":
            # A gate that fails a build confirms first: a second comparison must agree (a false alarm
            # twice in a row is the square of its rate).
            print("slower: confirming with a second comparison")
            again = compare(a, b, args.rounds, args.steps)
            print(f"B / A = {again}: {again.verdict(threshold)}")
            if again.verdict(threshold) == "slower":
                print(
                    f"mnist-bench: regression: B is slower than A beyond noise ({ratio.estimate:.3f}x, {again.estimate:.3f}x)",
                    file=sys.stderr,
                )
                return 1
    return 0


def cmd_bisect(args: argparse.Namespace) -> int:
    """Which first-parent commit made the train step slower; exit 1 when it could not be decided."""
    from .runs.ab import GATE_ROUNDS
    from .runs.bisect import run_bisect
    from .system.paths import SOURCE_ROOT

    parse_tag(args.a, ("compile", "precision", "channels_last", "fast"))  # a bad spec is one line before any worktree
    args.rounds = args.rounds or GATE_ROUNDS  # every step decides, as a gate does
    result, path = run_bisect(
        args.good,
        args.bad,
        Path(args.repo) if args.repo else SOURCE_ROOT,
        args.model,
        args.a,
        args.rounds,
        args.steps,
        args.threads,
        args.threshold,
        args.max_seconds,
    )
    print(result.summary())
    print(f"report: {path}")
    if result.outcome == "found" and args.explain:
        from .profiling.explain import DEFAULT_ROUNDS, DEFAULT_STEPS, run_explain

        parent = result.own.against
        explained, where = run_explain(
            parent,
            result.culprit,
            args.model,
            args.a,
            DEFAULT_ROUNDS,
            DEFAULT_STEPS,
            args.threads,
            Path(args.repo or SOURCE_ROOT),
        )
        print(f"where {result.culprit} is slower than {parent}: {explained.summary()} (report: {where})")
    return 0 if result.outcome in ("found", "none", "spread") else 1


def cmd_explain(args: argparse.Namespace) -> int:
    """Where in the step B differs from A: layers and ops, each with its interval."""
    from .profiling.explain import run_explain
    from .runs.ab import check_rounds
    from .system.paths import SOURCE_ROOT

    check_rounds(args.rounds, gate=True)
    result, path = run_explain(
        args.a_side, args.b_side, args.model, args.a, args.rounds, args.steps, args.threads, Path(args.repo or SOURCE_ROOT)
    )
    print(result.summary())
    print(f"report: {path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .runs.ab import DEFAULT_ROUNDS, calibrate, check_rounds, save_calibration

    args.rounds = args.rounds or DEFAULT_ROUNDS  # the comparisons ab makes by default; a gate's 20 are steadier still
    check_rounds(args.rounds, gate=True)
    side = _ab_side(args, args.spec, args.spec)
    held_out = args.runs if args.held_out is None else args.held_out
    plants = ", ".join(f"+{100 * share:.0f}%" for share in args.plants)
    print(
        f"calibrating {side.benchmark}: {args.runs} A/A runs set the threshold, {held_out} held-out A/A runs score it, "
        f"{args.runs} runs of each planted slowdown ({plants}) measure what it catches"
    )
    result = calibrate(side, args.runs, args.rounds, args.steps, tuple(args.plants), held_out)
    path = save_calibration(result)
    print(result.summary())
    print(f"stored in {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .scale.distributed import Rank
    from .system.atomic import check_writable_dir

    if Rank.from_env() is not None:
        raise UsageError(
            "sweep runs in one process (its runs one after another); DDP is for train (train --nproc N, or torchrun)"
        )
    from .runs.sweep import run_sweep, sweep_configs

    cluster_flags = [
        flag
        for flag, value in (
            ("--address", args.address),
            ("--cpus-per-run", args.cpus_per_run),
            ("--max-retries", args.max_retries),
        )
        if value is not None
    ]
    if args.cluster == "none" and cluster_flags:
        raise UsageError(
            f"{', '.join(cluster_flags)}: for a sweep on a cluster, which --cluster none (the default) is not; add --cluster ray"
        )
    configs = sweep_configs(
        _train_config(args), args.models, args.variants, args.seeds, recipes=args.recipes, to_target=args.to_target
    )
    check_writable_dir(Path(args.runs_dir))
    if args.cluster == "ray":
        from .runs.cluster import DEFAULT_MAX_RETRIES, cluster_address, run_cluster_sweep

        result = run_cluster_sweep(
            configs,
            Path(args.runs_dir),
            address=cluster_address(args.address),
            cpus_per_run=args.cpus_per_run,
            max_retries=DEFAULT_MAX_RETRIES if args.max_retries is None else args.max_retries,
            progress=_show_progress(args),
            redo_contended=args.redo_contended,
        )
    else:
        result = run_sweep(configs, Path(args.runs_dir), progress=_show_progress(args), redo_contended=args.redo_contended)
    elsewhere = f", {result['claimed_elsewhere']} being trained by another sweep" if result["claimed_elsewhere"] else ""
    failed = f", {len(result['failed'])} FAILED" if result["failed"] else ""
    print(
        f"sweep done: {result['trained']} trained, {result['skipped']} already finished{elsewhere}{failed}; "
        f"records in {args.runs_dir}/{args.dataset}"
    )
    for name, reason in result["failed"]:
        print(f"mnist-bench: error: run {name} failed: {reason}", file=sys.stderr)
    return 1 if result["failed"] else 0


def cmd_data(args: argparse.Namespace) -> int:
    from .core.data import load_dataset

    unknown = [n for n in args.names if n not in DATASETS]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose one of: {', '.join(DATASETS)}")
    missing, found = [], []
    for name in args.names or [n for n in DATASETS if n != "synthetic"]:
        try:
            dataset = load_dataset(name, args.data_root, download=args.download)
        except MnistBenchError as exc:
            found.append({"name": name, "available": False, "problem": str(exc)})
            missing.append(name)
            if not args.json:
                print(f"{name:14s} unavailable: {exc}")
            continue
        counts = dataset.counts()
        found.append(
            {"name": name, "available": True, "train": counts["train"], "test": counts["test"], "source": dataset.source}
        )
        if not args.json:
            print(f"{name:14s} {counts['train']:>6,} train / {counts['test']:>6,} test  from {dataset.source}")
    if args.json:
        print(json.dumps({"data_root": str(args.data_root), "datasets": found}))
    # Named datasets must be there (scripts check with `mnist-bench data NAME`); the overview only informs.
    return 1 if args.names and missing else 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiling.profiler import load_summaries, profile, save_summary
    from .reporting.kernels import write_kernel_report
    from .scale import distributed
    from .scale.job import open_job

    launched, rank = distributed.launch_or_join(args.nproc, args.argv)
    if launched:
        return 0
    variant = _variant(args)
    if args.variant:  # the same vocabulary as train, sweep and ab: a spec, or best (its loader does not matter here)
        choice = _chosen_variant(argparse.Namespace(**(vars(args) | {"loader": _default(TrainConfig, "loader")})))
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
    from .core.bench_row import bench_rows, skipped_rows
    from .reporting.benchmarks import load_bench_json, write_report
    from .system.atomic import write_text

    _check_report_flags(args)
    args.out = args.out or str(REPORTS_DIR / "accuracy-vs-cost.md")

    bench = load_bench_json(Path(args.bench_json)) if args.bench_json else None
    if bench is not None and not bench_rows(bench):  # an empty report is no report
        unread = skipped_rows(bench)
        raise UsageError(
            f"{args.bench_json} holds no benchmark row this version can read ({unread} entries without a usable timing or "
            "identity: a newer schema, or a run whose benchmarks were all disabled)"
        )
    if bench is not None and args.bench_out:
        write_report(bench, Path(args.bench_out), command=_rerender_command(bench, args.bench_json))
        print(f"benchmark report written to {args.bench_out}")
    if args.kernels:
        from .profiling.profiler import load_summaries
        from .reporting.kernels import write_kernel_report

        folder = Path(args.kernels)
        command = f"mnist-bench report --kernels {args.kernels} (summaries of mnist-bench profile runs)"
        write_kernel_report(folder / "conv-kernels.md", load_summaries(folder / "kernels"), command)
        print(f"kernel report written to {folder / 'conv-kernels.md'}")
    if args.no_accuracy:
        return 0
    from .reporting.accuracy import render
    from .reporting.benchmarks import bench_machine
    from .runs.records import RunStore
    from .system.machine import machine_key

    # Every machine's records by default (accuracy pools over them; costs stay per machine).
    roots = [Path(args.runs_dir)] if args.runs_dir else sorted(MACHINES_DIR.glob("*/runs"))
    if not roots:
        raise UsageError(f"no run records under {MACHINES_DIR}; train or sweep first (mnist-bench sweep --help)")
    runs, problems = [], []
    for root in roots:
        found, trouble = RunStore(root).load_all()
        runs += found
        problems += trouble
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not runs:
        raise UsageError(f"no valid run records under {', '.join(map(str, roots))}; train or sweep first")
    # Each machine's latencies come from its own benchmark JSON (a --bench-json serves its machine only).
    benches = {}
    for path in sorted(MACHINES_DIR.glob("*/benchmarks-*.json")):
        with contextlib.suppress(UsageError):
            data = load_bench_json(path)
            benches.setdefault(machine_key(bench_machine(data)), data)
    if bench is not None:
        benches[machine_key(bench_machine(bench))] = bench
    out = Path(args.out)
    write_text(out, render(runs, problems, benches, out.parent, command="mnist-bench report"))
    print(f"accuracy-vs-cost report written to {out} ({len(runs)} runs)")
    _write_tta_report(runs, out)
    if out.resolve().parent == REPORTS_DIR.resolve() and MACHINES_DIR.is_dir():  # the summary of all machines
        from .reporting.index import render_index

        write_text(REPORTS_DIR / "index.md", render_index(REPORTS_DIR, MACHINES_DIR))
        print(f"index of every machine's reports written to {REPORTS_DIR / 'index.md'}")
        _refresh_readme_results()
    return 0


def _write_tta_report(runs: list, out: Path) -> None:
    """This machine's time-to-accuracy report (another machine's is written on that machine): in its evidence
    folder beside the summary of all machines, else beside `out`."""
    from .reporting.tta import write_report
    from .system.machine import machine_info, machine_key

    here = machine_key(machine_info())
    mine = [r for r in runs if r.machine_key == here]
    folder = MACHINES_DIR / here if out.resolve().parent == REPORTS_DIR.resolve() else out.parent
    path = write_report(folder / "time-to-accuracy.md", mine, runs, "mnist-bench report")
    if path is not None:
        print(f"time-to-accuracy report of this machine written to {path}")


def _rerender_command(bench: dict, path: str) -> str:
    """How a re-rendered benchmark report came about: this command, and the one that timed it."""
    timed = (bench.get("mnist_bench") or {}).get("command") if isinstance(bench.get("mnist_bench"), dict) else None
    return f"mnist-bench report --bench-json {path}" + (f"` from a run of `{timed}" if timed else "")


def _refresh_readme_results() -> None:
    """The README beside the reports folder (the checkout's, with an editable install) carries a results
    table generated from the same evidence as the index: rewritten here, so it is never stale."""
    from .reporting.index import results_table, with_results
    from .system.atomic import write_text

    readme = REPORTS_DIR.parent / "README.md"
    try:
        text = readme.read_text()
    except OSError:
        return
    updated = with_results(text, results_table(MACHINES_DIR, "reports/machines"))
    if updated is not None and updated != text:
        write_text(readme, updated)
        print(f"results table in {readme} re-rendered")


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10%, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs side by side (or a trend over a folder); with --fail-above, a regression gate."""
    from .reporting.gate import compare_and_gate

    return compare_and_gate(
        [Path(p) for p in args.files],
        Path(args.out),
        fail_above=args.fail_above,
        baselines=Path(args.baselines) if args.baselines else None,
        plot=not args.no_plot,
        warn=lambda line: print(line, file=sys.stderr),
    )


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one net with the seed's recipe (or a variant) and save its record and weights",
        description="Train one net. Prints the seed's per-epoch cost line, then the real accuracy and the seed-style one.",
    )
    d = functools.partial(_default, TrainConfig)
    p.add_argument("--model", default=d("model"), choices=list(MODELS), help=f"which net (default: {d('model')})")
    p.add_argument("--seed", type=_seed, default=d("seed"), help=f"torch.manual_seed (default: {d('seed')}, the seed's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train and replace a finished run of the same recipe (by default it is kept and nothing is trained)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's record as one JSON object (plus record_path) on stdout; epoch lines go to stderr",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="a variant spec as sweep takes it (e.g. tensor-eager-bf16-cl-fast), or 'best': what mnist-bench tune stored "
        "for this machine (default: the switches below)",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="a recipe spec instead of --epochs/--batch-size/--lr: e.g. e3-b200-lr0.004-onecycle (e<epochs> b<batch> "
        "lr<rate> const|onecycle|cosine; tokens left out keep the seed's), seed, or best: what mnist-bench recipe-search "
        "found fastest to the target for this net and dataset on this machine (for speed to a target, not the seed's recipe)",
    )
    p.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        help="data-parallel ranks on this machine, started with torchrun's launcher (default: one process, no DDP)",
    )
    p.add_argument(
        "--per-rank-batch",
        type=_positive_int,
        default=None,
        help="weak scaling: this batch on every rank (default: the global --batch-size split among the ranks)",
    )
    p.add_argument(
        "--backend",
        default=d("backend"),
        choices=BACKENDS,
        help=f"torch.distributed backend under DDP: auto is gloo on cpu, nccl on cuda (default: {d('backend')})",
    )
    _add_data_flags(p)
    _add_recipe_flags(p)
    _add_variant_flags(p)
    p.set_defaults(func=cmd_train)


def _sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of model x variant x seed; resumes where it stopped",
        description="Train every model x variant x seed that has no run record yet. Variants are dash-joined tokens: "
        "loader (seed|tensor), compile (eager|compile|autotune), precision (fp32|bf16|fp16), cl for channels_last, fast for "
        "the fast training path; "
        "e.g. seed-eager-fp32 (the seed's pipeline) or tensor-eager-fp32-cl.",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="nets to train (default: both)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["seed-eager-fp32"],
        help="variant specs, or best: what mnist-bench tune stored for this machine (default: seed-eager-fp32)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=_seed,
        default=[SEED, SEED + 1, SEED + 2],
        help=f"seeds (default: {SEED} {SEED + 1} {SEED + 2})",
    )
    p.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        help="recipe specs (e.g. seed e3-b200-lr0.004-onecycle: e<epochs> b<batch> lr<rate> const|onecycle|cosine; "
        "tokens left out keep the seed's), each trained with every variant (default: --epochs/--batch-size/--lr)",
    )
    p.add_argument(
        "--cluster",
        choices=("none", "ray"),
        default="none",
        help="none: the runs one after another in this process; ray: one Ray task per run on a Ray cluster, records and "
        "weights written here (default: none; needs pip install -e '.[cluster]')",
    )
    p.add_argument(
        "--address",
        help="with --cluster ray: 'local' starts a private Ray instance on this machine for the sweep, 'auto' joins the "
        "cluster that `ray start` runs here, HOST:PORT or [IPv6]:PORT joins a head node, ray://HOST:PORT goes through "
        "Ray Client (default: $RAY_ADDRESS, else local)",
    )
    p.add_argument(
        "--cpus-per-run",
        type=_positive_int,
        help="with --cluster ray: CPUs each run reserves (and its torch threads); fewer than a node has packs runs "
        "together and marks their records as sharing the CPU (default: a whole node's CPUs)",
    )
    p.add_argument(
        "--max-retries",
        type=_whole_number(0, 100),
        help="with --cluster ray: how often Ray reruns a run whose worker process died or whose node left; a run that "
        "raises is not retried (default: 2)",
    )
    p.add_argument(
        "--redo-contended",
        action="store_true",
        help="also retrain finished runs whose records say another process shared the CPU (their times are "
        "upper bounds); the new record keeps the old figures under 'replaces'",
    )
    _add_data_flags(p)
    _add_recipe_flags(p)
    _add_variant_flags(p)
    p.set_defaults(func=cmd_sweep)


def _profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="profile one net + variant with torch.profiler: TensorBoard trace and conv-kernel report",
        description="Profile a train step (or a forward pass) with a wait/warmup/active schedule, recording shapes, FLOPs "
        "and memory. Writes a TensorBoard trace (PyTorch Profiler tab; also opens in ui.perfetto.dev), a JSON "
        "summary, and rebuilds the markdown conv-kernel report from all summaries.",
    )
    d = functools.partial(_default, ProfileConfig)
    p.add_argument("--model", default=d("model"), choices=list(MODELS), help=f"which net (default: {d('model')})")
    p.add_argument(
        "--mode",
        default=d("mode"),
        choices=["train", "forward"],
        help=f"a whole train step or forward only (default: {d('mode')})",
    )
    p.add_argument("--batch-size", type=_positive_int, default=d("batch_size"), help=f"batch size (default: {d('batch_size')})")
    p.add_argument(
        "--wait", type=_non_negative_int, default=d("wait"), help=f"profiler schedule: steps skipped first (default: {d('wait')})"
    )
    p.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=d("warmup"),
        help=f"profiler schedule: steps traced but discarded (default: {d('warmup')})",
    )
    p.add_argument(
        "--active", type=_positive_int, default=d("active"), help=f"profiler schedule: steps recorded (default: {d('active')})"
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
        type=_positive_int,
        default=None,
        help="profile a DDP train step on this many ranks (torchrun's launcher); one trace per rank (default: one process)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="a variant spec as train, sweep and ab take it (e.g. eager-bf16-cl-fast; a loader token is ignored), or "
        "'best': what mnist-bench tune stored for this machine (default: the switches below)",
    )
    _add_variant_flags(p)
    p.set_defaults(func=cmd_profile)


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


def _compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="benchmark runs side by side with their noise; a regression gate; a trend over a folder",
        description="Compare pytest-benchmark JSON files (the report's JSON, --benchmark-json or autosave files): per "
        "benchmark in both, the medians, their ratio and whether the difference is beyond the runs' noise (interquartile "
        "ranges that do not overlap). Runs from different machines also compare speedups and shares of each machine's own "
        "ceiling. One folder gives a trend table over the runs in it.",
    )
    p.add_argument(
        "files", nargs="+", metavar="JSON", help="BASE.json NEW.json [MORE.json ...] (each compared with BASE), or one folder"
    )
    p.add_argument(
        "--out",
        default=str(REPORTS_DIR / "compare.md"),
        help=f"markdown output; PNG plots beside it (default: {REPORTS_DIR / 'compare.md'})",
    )
    p.add_argument(
        "--fail-above",
        type=_percent,
        default=None,
        help="gate: exit 1 when a benchmark is slower beyond noise by more than this, e.g. 10%% (default: no gate)",
    )
    p.add_argument(
        "--baselines",
        default=None,
        help="the folder of per-machine evidence (e.g. reports/machines): compare NEW with <folder>/<its machine>/baseline.json; "
        "skip (exit 0, saying why) when there is none or the machine was busy (default: none)",
    )
    p.add_argument("--no-plot", action="store_true", help="no PNG, markdown only")
    p.set_defaults(func=cmd_compare)


def _tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="find the fastest training variant on this machine, in bounded time; train --variant best uses it",
        description="Time the train step of every candidate variant (threads, channels_last, the fast path, native bf16, "
        "optionally torch.compile), then whole mnist-5k epochs of the fastest through both loaders; print the ranking and "
        "store the fastest per net for train --variant best and sweep --variants best. Run it alone on the machine.",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="nets to tune (default: both)")
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds to spend; a timing under way is finished (default: {DEFAULT_BUDGET_S})",
    )
    p.add_argument("--with-compile", action="store_true", help="also time torch.compile candidates (tens of seconds each)")
    p.add_argument(
        "--out-dir",
        default=str(DEFAULT_TUNE_DIR),
        help=f"the folder of per-machine evidence; the result goes to <folder>/<this machine>/tune.json (default: {DEFAULT_TUNE_DIR})",
    )
    p.set_defaults(func=cmd_tune)


def _ab_common(p, rounds: int | None = None, steps: int | None = None, rounds_help: str | None = None) -> None:
    """--model, --rounds, --steps, --threads of the commands that run A/B workers (ab, calibrate, bisect, explain)."""
    from .runs.ab import DEFAULT_ROUNDS, DEFAULT_STEPS, GATE_ROUNDS

    steps = steps or DEFAULT_STEPS
    rounds_help = (
        rounds_help or f"interleaved rounds (default: {DEFAULT_ROUNDS}; {GATE_ROUNDS} for a decision: ab --gate, bisect)"
    )
    p.add_argument("--model", default="simple", choices=list(MODELS), help="which net's train step (default: simple)")
    p.add_argument("--rounds", type=_positive_int, default=rounds, help=rounds_help)
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=steps,
        help=f"train steps per block (ab: their trimmed mean, the middle 60%%; explain: profiled) (default: {steps})",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads of both sides (default: torch's choice)")


def _ab_parser(sub) -> None:
    p = sub.add_parser(
        "ab",
        help="compare two variants or two commits by interleaving them on this machine, with an interval",
        description="Time the train step of two sides in alternating rounds (A B, B A, ...), each side in its own process, "
        "and print B's time over A's with the order-statistic interval of the median ratio over rounds, at the level it has "
        "(96.9%% or more from 6 rounds; fewer rounds give their whole range, at a lower level it prints). Sides: two variant specs (--a, --b) or "
        "one spec at two commits (--commits A B, each run from a git worktree). Run it alone on the machine.",
    )
    p.add_argument("--a", default="eager-fp32", help="side A's switches as a spec, e.g. eager-fp32-cl (default: eager-fp32)")
    p.add_argument("--b", default=None, help="side B's switches as a spec (or use --commits)")
    p.add_argument(
        "--commits", nargs=2, metavar=("A", "B"), default=None, help="two git revisions of this checkout, both with --a's spec"
    )
    p.add_argument(
        "--threshold",
        type=_percent,
        default=None,
        help="a difference smaller than this is noise (default: this machine's calibration, else 5%%)",
    )
    p.add_argument(
        "--gate",
        action="store_true",
        help="exit 1 when B is slower than A beyond noise and the threshold, in two comparisons running (the second confirms)",
    )
    _ab_common(p)
    p.set_defaults(func=cmd_ab)


def _bisect_parser(sub) -> None:
    from .runs.bisect import DEFAULT_MAX_SECONDS

    p = sub.add_parser(
        "bisect",
        help="find the commit that made the train step slower: a bisection of interleaved A/Bs, decided beyond noise",
        description="Bisect the first-parent commits after GOOD up to BAD. Each step compares a commit with GOOD as "
        "mnist-bench ab --commits does (interleaved, both start orders) and decides only beyond this machine's "
        "calibrated threshold with the interval excluding 1. It names the first slower commit with its ratio against its "
        "parent, or says that GOOD and BAD do not differ beyond noise, that the slowdown is spread over several commits, "
        "or where it stopped (an undecided step, commits that do not run, the time bound). The steps go to "
        "reports/machines/<machine>/bisect/. Run it alone on the machine.",
    )
    p.add_argument("good", help="a commit known to be fast")
    p.add_argument("bad", help="a later commit known (or feared) to be slower")
    p.add_argument("--a", default="eager-fp32", help="the variant spec both sides run (default: eager-fp32)")
    p.add_argument("--repo", default=None, help="the git repository (default: this checkout)")
    p.add_argument(
        "--threshold", type=_percent, default=None, help="the threshold (default: this machine's calibration, else 5%%)"
    )
    p.add_argument(
        "--max-seconds",
        type=_positive_int,
        default=DEFAULT_MAX_SECONDS,
        help=f"stop the search after this long and name the range left (default: {DEFAULT_MAX_SECONDS})",
    )
    p.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="do not profile the commit found against its parent (default: mnist-bench explain runs on it, about a minute)",
    )
    _ab_common(p)
    p.set_defaults(func=cmd_bisect)


def _explain_parser(sub) -> None:
    from .profiling.explain import DEFAULT_ROUNDS as EXPLAIN_ROUNDS
    from .profiling.explain import DEFAULT_STEPS as EXPLAIN_STEPS

    p = sub.add_parser(
        "explain",
        help="where in the train step B is slower than A: layers (forward, backward) and ops, each with its interval",
        description="Profile two sides in alternating rounds (two variant specs, or two commits each running --a's spec) "
        "and attribute the difference of the step to the net's layers, forward and backward, and to the ops under them: "
        "per layer the median difference over rounds with its interval, the layers slower beyond noise named first, and "
        "the roof each layer sits under on each side. The report goes to reports/machines/<machine>/explain/.",
    )
    p.add_argument("a_side", metavar="A", help="a commit, or a variant spec (e.g. eager-fp32)")
    p.add_argument("b_side", metavar="B", help="a commit, or a variant spec (e.g. eager-fp32-cl)")
    p.add_argument("--a", default="eager-fp32", help="with two commits: the variant spec both run (default: eager-fp32)")
    p.add_argument("--repo", default=None, help="the git repository of the commits (default: this checkout)")
    _ab_common(p, EXPLAIN_ROUNDS, EXPLAIN_STEPS, f"alternating rounds of profiled blocks (default: {EXPLAIN_ROUNDS})")
    p.set_defaults(func=cmd_explain)


def _calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this machine's noise: A/A comparisons, held-out A/A runs and planted slowdowns; stores the gate's threshold",
        description="Run A/A comparisons of one train step against itself: the first set sets the threshold (their largest "
        "effect), a second, held-out set counts the false alarms at that threshold. Then comparisons against planted "
        "slowdowns (a busy-wait of that share of each step) give the detection rate of each and the minimum detectable "
        "effect. Stored in reports/machines/<machine>/noise.json for mnist-bench ab and the gate. Run it alone on the "
        "machine; each comparison takes about 20 s.",
    )
    p.add_argument("--spec", default="eager-fp32", help="the variant's switches as a spec (default: eager-fp32)")
    p.add_argument(
        "--runs",
        type=_positive_int,
        default=10,
        help="A/A comparisons that set the threshold, and runs of each plant (default: 10)",
    )
    p.add_argument(
        "--held-out", type=_positive_int, default=None, help="held-out A/A comparisons that score it (default: --runs)"
    )
    p.add_argument(
        "--plants",
        type=_percent,
        nargs="+",
        default=[0.05, 0.10, 0.20],
        help="planted slowdowns whose detection is measured (default: 5%% 10%% 20%%)",
    )
    _ab_common(p)
    p.set_defaults(func=cmd_calibrate)


def _recipe_search_parser(sub) -> None:
    from .runs.recipe_search import DEFAULT_BUDGET_S as SEARCH_BUDGET_S
    from .runs.recipe_search import DEFAULT_CANDIDATES, DEFAULT_RECIPES_PATH, DEFAULT_SEEDS

    p = sub.add_parser(
        "recipe-search",
        help="find the recipe (epochs, batch, rate, schedule) that reaches a net's target soonest on this machine",
        description="Successive halving over candidate recipes, seeds as the resource: every candidate trains to the net's "
        "target (mnist-bench targets) on the first seed, the faster half goes on with more seeds, until one has run every "
        "seed or the budget is spent. Each run is stored like any run; the pick goes to recipes.json for train --recipe "
        "best; mnist-bench report scores every recipe in time-to-accuracy.md. Run it alone on the machine.",
    )
    p.add_argument("--model", default="simple", choices=list(MODELS), help="which net (default: simple)")
    p.add_argument(
        "--recipes",
        nargs="+",
        default=list(DEFAULT_CANDIDATES),
        help=f"candidate recipe specs (default: {' '.join(DEFAULT_CANDIDATES)})",
    )
    p.add_argument(
        "--variant",
        default="best",
        help="the implementation variant every candidate runs: a spec, or best: what mnist-bench tune stored (default: best)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=_seed,
        default=list(DEFAULT_SEEDS),
        help=f"seeds, in the order rounds add them (default: {' '.join(map(str, DEFAULT_SEEDS))})",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=SEARCH_BUDGET_S,
        help=f"seconds; no round starts that would pass it (default: {SEARCH_BUDGET_S:g})",
    )
    p.add_argument(
        "--cluster", choices=("none", "ray"), default="none", help="ray: each round's runs as Ray tasks (default: none)"
    )
    p.add_argument("--address", help="with --cluster ray: as sweep --address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--out", default=str(DEFAULT_RECIPES_PATH), help=f"where the result goes (default: {DEFAULT_RECIPES_PATH})")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: the variant's, else torch's)")
    _add_data_flags(p, default_dataset="fashion-mnist")
    p.add_argument(
        "--runs-dir", default=str(DEFAULT_RUNS_DIR), help=f"where the runs' records and weights go (default: {DEFAULT_RUNS_DIR})"
    )
    p.set_defaults(func=cmd_recipe_search, to_target=False, no_latency=True, loader="seed", eval_batch_size=100)
    p.set_defaults(
        epochs=_default(TrainConfig, "epochs"), batch_size=_default(TrainConfig, "batch_size"), lr=_default(TrainConfig, "lr")
    )
    p.set_defaults(compile="off", precision="fp32", channels_last=False, fast=False, device="auto")


def _targets_parser(sub) -> None:
    p = sub.add_parser("targets", help="the time-to-accuracy target of each dataset and net, and where it comes from")
    p.set_defaults(func=cmd_targets)


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="show which datasets are available here, and where from (exit 1 if a named one is not)")
    p.add_argument("names", nargs="*", metavar="DATASET", help=f"any of: {', '.join(DATASETS)} (default: all but synthetic)")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help=f"data root (default: {DEFAULT_ROOT})")
    p.add_argument("--download", action="store_true", help="download mnist / fashion-mnist if missing (needs internet)")
    p.add_argument("--json", action="store_true", help="print one JSON object: {data_root, datasets: [{name, available, ...}]}")
    p.set_defaults(func=cmd_data)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnist-bench",
        description="Train, sweep, profile and report on the seed's two MNIST CNNs (simple, deep).",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("mnist-cnn-bench")
    except PackageNotFoundError:  # run from a checkout that was not installed
        own = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"mnist-bench {own}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _train_parser(sub)
    _sweep_parser(sub)
    _profile_parser(sub)
    _report_parser(sub)
    _compare_parser(sub)
    _tune_parser(sub)
    _ab_parser(sub)
    _calibrate_parser(sub)
    _bisect_parser(sub)
    _explain_parser(sub)
    _recipe_search_parser(sub)
    _targets_parser(sub)
    _data_parser(sub)
    return parser


def _terminated(signum, frame) -> None:
    raise Interrupted("terminated (SIGTERM): every process this command started was ended; finished runs are saved", signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        from .runs.config import check_thread_env
        from .scale.distributed import Rank

        check_thread_env()  # the environment is read once, with the flags' rules, before any work
        Rank.from_env()
        signal.signal(signal.SIGTERM, _terminated)  # SIGTERM cleans up as Ctrl-C does (claims, workers, temp files)
        keep_freed_memory()  # before any tensor: every command's steps reuse their memory (system/allocator.py)
        return args.func(args)
    except MnistBenchError as exc:
        from .scale.distributed import report_failure

        try:
            rank = Rank.from_env()
        except MnistBenchError:  # the environment itself was the error
            rank = None
        where = f"rank {rank.rank}: " if rank and rank.world_size > 1 and not str(exc).startswith("rank ") else ""
        print(f"mnist-bench: error: {where}{exc}", file=sys.stderr)
        if rank:
            report_failure(str(exc))  # torchrun's launcher reads it: the job's one-line reason
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnist-bench: interrupted; finished runs are saved, the unfinished one left nothing behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
