"""The flags several commands share, one vocabulary: variants, data, recipes, A/B workers.

Each reads its defaults from the config dataclass that owns them (typed once, there), and each
`type=` turns a bad value into a one-line argparse error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.data import DATASETS, DEFAULT_ROOT, LOADERS
from ..core.nets import MODELS
from ..core.variants import COMPILE_MODES, DEVICES, PRECISIONS, Variant, parse_tag
from ..runs.config import MAX_SEED, MAX_THREADS_PER_CPU, TrainConfig
from ..runs.records import DEFAULT_RUNS_DIR
from ..system.errors import UsageError


def whole_number(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
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


positive_int = whole_number(1)


non_negative_int = whole_number(0)


seed = whole_number(0, MAX_SEED, " (torch.manual_seed's 64-bit range)")


def default(cls, name: str):
    """A flag's default, read from the config dataclass that owns it (typed once, there)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def percent(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10%, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The switches shared by train, sweep and profile (docs/DESIGN.md, Variants); `variant` reads them back."""
    d = functools.partial(default, Variant)
    device = default(TrainConfig, "variant").device  # a config's default variant leaves the device to the run: auto
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
        type=positive_int,
        default=None,
        help=f"torch intra-op threads, at most {MAX_THREADS_PER_CPU}x the logical CPUs (default: torch's choice)",
    )


def variant(args: argparse.Namespace) -> Variant:
    """The variant the flags name (its device may still be 'auto': runs resolve it when they start)."""
    return Variant(args.device, args.compile, args.precision, args.channels_last, args.fast)


def add_data_flags(parser: argparse.ArgumentParser, default_dataset: str = default(TrainConfig, "dataset")) -> None:
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


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    d = functools.partial(default, TrainConfig)
    parser.add_argument(
        "--epochs", type=positive_int, default=d("epochs"), help=f"training epochs (default: {d('epochs')}, the seed's)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
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
        type=positive_int,
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


def recipe_flags(args: argparse.Namespace) -> dict:
    """--recipe SPEC as config fields; it names the epochs, batch and lr, so those flags must stay at their defaults."""
    spec = getattr(args, "recipe", None)
    if not spec:
        return {}
    from ..core.recipes import Recipe

    given = [
        flag
        for flag, name in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"))
        if getattr(args, name) != default(TrainConfig, name)
    ]
    if given:
        raise UsageError(f"--recipe sets the recipe; leave out {', '.join(given)} (or name it in the spec)")
    if spec == "best":
        from ..runs.recipe_search import best_recipe

        recipe = best_recipe(args.dataset, getattr(args, "model", default(TrainConfig, "model")))
    else:
        recipe = Recipe.parse(spec)
    return dict(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)


def train_config(args: argparse.Namespace, **overrides) -> TrainConfig:
    fields = dict(
        model=getattr(args, "model", default(TrainConfig, "model")),
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=getattr(args, "seed", default(TrainConfig, "seed")),
        variant=variant(args),
        loader=args.loader,
        eval_batch_size=args.eval_batch_size,
        threads=args.threads,
        measure_latency=not args.no_latency,
    )
    config = TrainConfig(**(fields | recipe_flags(args) | overrides))
    return config.to_target() if args.to_target and hasattr(args, "model") else config  # a sweep: per net


def show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def chosen_variant(args: argparse.Namespace) -> dict:
    """train --variant SPEC|best: the variant's switches (and, for best, the tuned thread count)."""
    if not args.variant:
        return {}
    from ..runs.sweep import spec_choice

    switches = {
        "--loader": args.loader != default(TrainConfig, "loader"),
        "--compile": args.compile != default(Variant, "compile"),
        "--precision": args.precision != default(Variant, "precision"),
        "--channels-last": args.channels_last,
        "--fast": args.fast,
    }
    both = [flag for flag, given in switches.items() if given]
    if both:
        raise UsageError(f"--variant sets the variant; leave out {', '.join(both)} (or name it in the spec)")
    return spec_choice(args.variant, args.model)


def ab_common(p, rounds: int | None = None, steps: int | None = None, rounds_help: str | None = None) -> None:
    """--model, --rounds, --steps, --threads of the commands that run A/B workers (ab, calibrate, bisect, explain)."""
    from ..runs.ab import DEFAULT_ROUNDS, DEFAULT_STEPS, GATE_ROUNDS

    steps = steps or DEFAULT_STEPS
    rounds_help = (
        rounds_help or f"interleaved rounds (default: {DEFAULT_ROUNDS}; {GATE_ROUNDS} for a decision: ab --gate, bisect)"
    )
    p.add_argument("--model", default="simple", choices=list(MODELS), help="which net's train step (default: simple)")
    p.add_argument("--rounds", type=positive_int, default=rounds, help=rounds_help)
    p.add_argument(
        "--steps",
        type=positive_int,
        default=steps,
        help=f"train steps per block (ab: their trimmed mean, the middle 60%%; explain: profiled) (default: {steps})",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads of both sides (default: torch's choice)")


def ab_side(args: argparse.Namespace, label: str, spec: str, source: Path | None = None):
    from ..runs.ab import Side
    from ..system.paths import SOURCE_ROOT

    parse_tag(spec, Variant.SWITCHES)  # one line for a bad spec, before any process
    return Side(label, args.model, spec, source or SOURCE_ROOT, args.threads)
