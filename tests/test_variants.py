"""One vocabulary: every name renders from fields and parses back to the same fields."""

import itertools
import sys
from pathlib import Path

import pytest

from mnist_models.core.variants import COMPILE_MODES, PRECISIONS, Variant, parse_tag, render_tag
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.sweep import parse_variant_spec
from mnist_models.system.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import grid  # noqa: E402  (the benchmark grid: its ids must parse too)


def all_variants():
    for device, compile, precision, cl, fast in itertools.product(
        ("cpu", "cuda"), COMPILE_MODES, PRECISIONS, (False, True), (False, True)
    ):
        if precision == "fp16" and device == "cpu":
            continue
        yield Variant(device, compile, precision, cl, fast)


@pytest.mark.parametrize("variant", list(all_variants()), ids=lambda v: v.tag)
def test_variant_tag_round_trips(variant):
    assert Variant.parse(variant.tag) == variant


def test_cpu_max_autotune_has_one_name():
    # No CUDA graphs on a CPU: the two max-autotune modes are one compile there, with one tag.
    assert Variant("cpu", "max-autotune-no-cudagraphs") == Variant("cpu", "max-autotune")
    assert Variant("cpu", "max-autotune").tag == "cpu-autotune-fp32"
    assert Variant("cuda", "max-autotune-no-cudagraphs").tag == "cuda-autotunenocg-fp32"


def test_sweep_specs_round_trip():
    for spec in (
        "seed-eager-fp32",
        "tensor-eager-bf16-cl",
        "tensor-compile-fp32",
        "seed-autotune-bf16-cl",
        "tensor-eager-fp32-cl-fast",
    ):
        fields = parse_variant_spec(spec)
        assert render_tag(**fields) == spec
    assert parse_variant_spec("tensor-eager-bf16-cl") == {
        "loader": "tensor",
        "compile": "off",
        "precision": "bf16",
        "channels_last": True,
    }


@pytest.mark.parametrize("maker", [grid.forward_cases, grid.train_step_cases, grid.epoch_cases])
def test_every_benchmark_id_round_trips(maker):
    for param in maker():
        case = param.values[0]
        fields = parse_tag(case.id)
        assert render_tag(**fields) == case.id
        assert (
            Variant(
                fields["device"],
                fields.get("compile", "off"),
                fields["precision"],
                fields.get("channels_last", False),
                fields.get("fast", False),
            )
            == case.variant
        )
        assert fields["batch_size"] == case.batch and fields.get("threads") == case.threads


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(dataset="mnist-5k"),
        TrainConfig(
            dataset="fashion-mnist",
            model="deep",
            loader="tensor",
            threads=1,
            seed=5,
            variant=Variant(device="cpu", precision="bf16", channels_last=True),
        ),
        TrainConfig(
            dataset="mnist-5k", epochs=2, batch_size=50, lr=3e-4, seed=0, variant=Variant(device="cpu", compile="max-autotune")
        ),
        TrainConfig(dataset="mnist-5k", loader="tensor", seed=1, variant=Variant(device="cpu", channels_last=True, fast=True)),
    ],
)
def test_run_names_carry_the_whole_recipe(config):
    key = config.resolve()
    named = parse_tag(key.name)
    assert named["model"] == key.model and named["loader"] == key.loader and named["threads"] == key.threads
    assert Variant(**{f: named.get(f, getattr(Variant(), f)) for f in Variant.VARIANT_FIELDS}) == key.variant
    assert (named.get("epochs", 15), named.get("batch_size", 100), named.get("lr", 1e-3), named["seed"]) == (
        key.epochs,
        key.batch_size,
        key.lr,
        key.seed,
    )


def test_names_differ_whenever_the_recipe_does():
    base = TrainConfig(dataset="mnist-5k", threads=2)
    variants = [base] + [
        base.with_choice(change)
        for change in (
            {"epochs": 2},
            {"lr": 2e-3},
            {"batch_size": 50},
            {"threads": 1},
            {"seed": 778},
            {"loader": "tensor"},
            {"fast": True},
        )
    ]
    assert len({c.resolve().name for c in variants}) == len(variants)


@pytest.mark.parametrize(
    "tag, message",
    [("tensor-nhwc", "unknown token 'nhwc'"), ("eager-compile", "names the compile twice"), ("cpu-fp64", "unknown token 'fp64'")],
)
def test_bad_tags(tag, message):
    with pytest.raises(UsageError, match=message):
        parse_tag(tag)


def test_a_sweep_spec_cannot_name_what_the_sweep_sets():
    with pytest.raises(UsageError, match="unknown token 's777'"):
        parse_variant_spec("tensor-eager-fp32-s777")
