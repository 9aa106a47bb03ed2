"""The commands that train: train, sweep, tune, recipe-search, targets, data."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from ..core.data import DATASETS, DEFAULT_ROOT
from ..core.nets import MODELS
from ..runs.config import BACKENDS, SEED, TrainConfig
from ..runs.records import DEFAULT_RUNS_DIR
from ..runs.tune import DEFAULT_BUDGET_S, DEFAULT_TUNE_DIR
from ..system.errors import MnistBenchError, UsageError
from . import flags


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one net with the seed's recipe (or a variant) and save its record and weights",
        description="Train one net. Prints the seed's per-epoch cost line, then the real accuracy and the seed-style one.",
    )
    d = functools.partial(flags.default, TrainConfig)
    p.add_argument("--model", default=d("model"), choices=list(MODELS), help=f"which net (default: {d('model')})")
    p.add_argument("--seed", type=flags.seed, default=d("seed"), help=f"torch.manual_seed (default: {d('seed')}, the seed's)")
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
        type=flags.positive_int,
        default=None,
        help="data-parallel ranks on this machine, started with torchrun's launcher (default: one process, no DDP)",
    )
    p.add_argument(
        "--per-rank-batch",
        type=flags.positive_int,
        default=None,
        help="weak scaling: this batch on every rank (default: the global --batch-size split among the ranks)",
    )
    p.add_argument(
        "--backend",
        default=d("backend"),
        choices=BACKENDS,
        help=f"torch.distributed backend under DDP: auto is gloo on cpu, nccl on cuda (default: {d('backend')})",
    )
    flags.add_data_flags(p)
    flags.add_recipe_flags(p)
    flags.add_variant_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..runs.records import RunStore
    from ..runs.train import train_and_store
    from ..scale import distributed
    from ..system.machine import busy_warning

    launched, rank = distributed.launch_or_join(args.nproc, args.argv)
    if launched:
        return 0
    world = rank.world_size if rank else 1
    batch = {"batch_size": args.per_rank_batch * world} if args.per_rank_batch else {}
    config = flags.train_config(args, ranks=world, backend=args.backend, **batch).with_choice(flags.chosen_variant(args))
    record, path = train_and_store(
        config,
        RunStore(args.runs_dir),
        overwrite=args.overwrite,
        progress=flags.show_progress(args),
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
        type=flags.seed,
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
        type=flags.positive_int,
        help="with --cluster ray: CPUs each run reserves (and its torch threads); fewer than a node has packs runs "
        "together and marks their records as sharing the CPU (default: a whole node's CPUs)",
    )
    p.add_argument(
        "--max-retries",
        type=flags.whole_number(0, 100),
        help="with --cluster ray: how often Ray reruns a run whose worker process died or whose node left; a run that "
        "raises is not retried (default: 2)",
    )
    p.add_argument(
        "--redo-contended",
        action="store_true",
        help="also retrain finished runs whose records say another process shared the CPU (their times are "
        "upper bounds); the new record keeps the old figures under 'replaces'",
    )
    flags.add_data_flags(p)
    flags.add_recipe_flags(p)
    flags.add_variant_flags(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..scale.distributed import Rank
    from ..system.atomic import check_writable_dir

    if Rank.from_env() is not None:
        raise UsageError(
            "sweep runs in one process (its runs one after another); DDP is for train (train --nproc N, or torchrun)"
        )
    from ..runs.sweep import run_sweep, sweep_configs

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
        flags.train_config(args), args.models, args.variants, args.seeds, recipes=args.recipes, to_target=args.to_target
    )
    check_writable_dir(Path(args.runs_dir))
    if args.cluster == "ray":
        from ..runs.cluster import DEFAULT_MAX_RETRIES, cluster_address, run_cluster_sweep

        result = run_cluster_sweep(
            configs,
            Path(args.runs_dir),
            address=cluster_address(args.address),
            cpus_per_run=args.cpus_per_run,
            max_retries=DEFAULT_MAX_RETRIES if args.max_retries is None else args.max_retries,
            progress=flags.show_progress(args),
            redo_contended=args.redo_contended,
        )
    else:
        result = run_sweep(configs, Path(args.runs_dir), progress=flags.show_progress(args), redo_contended=args.redo_contended)
    elsewhere = f", {result['claimed_elsewhere']} being trained by another sweep" if result["claimed_elsewhere"] else ""
    failed = f", {len(result['failed'])} FAILED" if result["failed"] else ""
    print(
        f"sweep done: {result['trained']} trained, {result['skipped']} already finished{elsewhere}{failed}; "
        f"records in {args.runs_dir}/{args.dataset}"
    )
    for name, reason in result["failed"]:
        print(f"mnist-bench: error: run {name} failed: {reason}", file=sys.stderr)
    return 1 if result["failed"] else 0


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


def cmd_tune(args: argparse.Namespace) -> int:
    from ..runs.tune import save_tuning, tune

    result = tune(args.models, budget_s=args.budget, with_compile=args.with_compile)
    path = save_tuning(result, Path(args.out_dir))
    print(f"\ntuned in {result.seconds:.0f} s ({len(result.steps)} step and {len(result.epochs)} epoch timings)")
    for line in result.skipped:
        print(f"skipped: {line}")
    if result.unmeasured:
        print(f"not measured within --budget {args.budget:g} s: {len(result.unmeasured)} candidates")
    for model, best in result.best.items():
        print(f"\n{model}: epochs of mnist-5k, fastest first")
        for name, seconds in result.epochs_of(model):
            print(f"  {name:45s} {seconds:6.2f} s")
        print(f"  {'the seed pipeline (seed-eager-fp32)':45s} {result.reference[model]:6.2f} s")
        print(f"decided: {result.decisions[model]}")
        print(
            f"best for {model}: {best.spec} with {best.threads} thread(s); the seed pipeline's epoch over its epoch, "
            f"interleaved: {result.speedups[model]} (mnist-bench train --model {model} --variant best)"
        )
    print(f"\nstored in {path} (report: {path.with_suffix('.md')})")
    return 0


def _recipe_search_parser(sub) -> None:
    from ..runs.recipe_search import DEFAULT_BUDGET_S as SEARCH_BUDGET_S
    from ..runs.recipe_search import DEFAULT_CANDIDATES, DEFAULT_RECIPES_PATH, DEFAULT_SEEDS

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
        type=flags.seed,
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
    p.add_argument(
        "--threads", type=flags.positive_int, default=None, help="torch threads (default: the variant's, else torch's)"
    )
    flags.add_data_flags(p, default_dataset="fashion-mnist")
    p.add_argument(
        "--runs-dir", default=str(DEFAULT_RUNS_DIR), help=f"where the runs' records and weights go (default: {DEFAULT_RUNS_DIR})"
    )
    p.set_defaults(func=cmd_recipe_search, to_target=False, no_latency=True, loader="seed", eval_batch_size=100)
    p.set_defaults(
        epochs=flags.default(TrainConfig, "epochs"),
        batch_size=flags.default(TrainConfig, "batch_size"),
        lr=flags.default(TrainConfig, "lr"),
    )
    p.set_defaults(compile="off", precision="fp32", channels_last=False, fast=False, device="auto")


def cmd_recipe_search(args: argparse.Namespace) -> int:
    from ..core.recipes import Recipe
    from ..runs.recipe_search import search, store_result
    from ..runs.sweep import spec_choice

    candidates = [Recipe.parse(spec) for spec in args.recipes]
    base = flags.train_config(args).with_choice(spec_choice(args.variant, args.model))
    from ..system.atomic import ensure_writable_dir

    ensure_writable_dir(Path(args.runs_dir))
    train_round = None
    if args.cluster == "ray":
        from ..runs.cluster import DEFAULT_MAX_RETRIES, cluster_address, run_cluster_sweep

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


def _targets_parser(sub) -> None:
    p = sub.add_parser("targets", help="the time-to-accuracy target of each dataset and net, and where it comes from")
    p.set_defaults(func=cmd_targets)


def cmd_targets(args: argparse.Namespace) -> int:
    from ..core.targets import TARGETS

    for (dataset, model), target in TARGETS.items():
        print(f"{dataset:14s} {model:7s} {target.accuracy:.2%}  {target.source}")
    return 0


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="show which datasets are available here, and where from (exit 1 if a named one is not)")
    p.add_argument("names", nargs="*", metavar="DATASET", help=f"any of: {', '.join(DATASETS)} (default: all but synthetic)")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help=f"data root (default: {DEFAULT_ROOT})")
    p.add_argument("--download", action="store_true", help="download mnist / fashion-mnist if missing (needs internet)")
    p.add_argument("--json", action="store_true", help="print one JSON object: {data_root, datasets: [{name, available, ...}]}")
    p.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from ..core.data import IDX_FOLDERS, load_dataset

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
                fetch = "" if args.download or name not in IDX_FOLDERS else " (mnist-bench data --download fetches it)"
                print(f"{name:14s} unavailable{fetch}: {exc}")
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


def register(sub) -> None:
    """Add this module's commands to the `mnist-bench` parser."""
    _train_parser(sub)
    _sweep_parser(sub)
    _tune_parser(sub)
    _recipe_search_parser(sub)
    _targets_parser(sub)
    _data_parser(sub)
