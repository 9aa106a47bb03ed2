"""mnist-bench explain: a step's difference attributed to layers and ops, each with its interval."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_models.profiling.explain import REST, attribute, explain

ROOT = Path(__file__).resolve().parent.parent
CONV2_FORWARD = {"name": "aten::mkldnn_convolution", "input_shapes": [[100, 32, 14, 14], [64, 32, 3, 3], [64]]}
CONV1_FORWARD = {"name": "aten::mkldnn_convolution", "input_shapes": [[100, 1, 28, 28], [32, 1, 3, 3], [32]]}
POOL1 = {"name": "aten::max_pool2d_with_indices", "input_shapes": [[100, 32, 28, 28]]}
LOSS = {"name": "aten::log_softmax", "input_shapes": [[100, 10]]}


def ops(rng: random.Random, conv2_us: float) -> list[dict]:
    """One profiled block of the simple net, a few ops of it, each with a little noise."""
    noisy = lambda us: us * (1 + rng.gauss(0, 0.03))  # noqa: E731
    return [
        CONV1_FORWARD | {"self_us": noisy(700), "calls": 1},
        CONV2_FORWARD | {"self_us": noisy(conv2_us), "calls": 1},
        POOL1 | {"self_us": noisy(900), "calls": 1},
        LOSS | {"self_us": noisy(50), "calls": 1},
    ]


def block(rng: random.Random, conv2_us: float, outside_ms: float = 0.3) -> dict:
    """A block as a worker answers it: the ops, and the wall time of a step (ops plus time outside them)."""
    table = ops(rng, conv2_us)
    return {"ops": table, "wall_ms": sum(o["self_us"] for o in table) / 1e3 + outside_ms * (1 + rng.gauss(0, 0.03))}


def test_ops_are_attributed_to_their_layers_and_the_rest_of_the_step():
    layers, by_op = attribute(ops(random.Random(0), 1200), "simple", "fp32")
    assert layers["layer1.0 forward"] > 600 / 1e3 and layers["layer2.0 forward"] > 1000 / 1e3
    assert layers["layer1.2 forward"] > 800 / 1e3  # the pool of layer1, found by the shape it sees
    assert layers[REST] == pytest.approx(by_op["aten::log_softmax"])  # the loss belongs to no layer


def test_a_slowdown_planted_in_one_layer_is_named_first_and_the_others_stay_within_noise():
    rng = random.Random(1)
    result = explain(lambda: block(rng, 1200), lambda: block(rng, 2400), "A", "B", "simple", ("fp32", "fp32"), rounds=8, steps=5)
    first = result.culprits()[0]
    assert first.name == "layer2.0 forward" and first.low > 0 and first.estimate == pytest.approx(1.2, abs=0.15)
    assert [d.name for d in result.culprits()] == ["layer2.0 forward"]
    assert "slower beyond noise: layer2.0 forward" in result.summary()


def test_time_outside_every_op_is_named_when_no_layer_is_slower():
    """A busy-wait after the step's last op (the bisect session's plant) is seen by the wall clock only."""
    rng = random.Random(2)
    result = explain(
        lambda: block(rng, 1200),
        lambda: block(rng, 1200, outside_ms=3.0),
        "A",
        "B",
        "simple",
        ("fp32", "fp32"),
        rounds=8,
        steps=5,
    )
    assert [d.name for d in result.culprits()] == ["outside every torch op"]


PLANT = """


def _forward_with_an_extra_conv2(self, x):
    x = self.layer1(x)
    _ = self.layer2[0](x)  # planted: layer2's convolution run once more, its result unused
    x = self.layer2(x)
    return self.fc(x.flatten(1))


SimpleCNN.forward = _forward_with_an_extra_conv2
"""


@pytest.mark.slow
def test_explain_names_the_layer_a_commit_slowed(tmp_path, history):
    nets = history.repo / "mnist_models" / "core" / "nets.py"
    nets.write_text(nets.read_text() + PLANT)
    history.commit("an extra conv2")
    repo = history.repo
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "mnist_models", "explain", "HEAD~1", "HEAD", "--repo", str(repo), "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "slower beyond noise: layer2.0 forward" in result.stdout, result.stdout[-3000:]
    (report,) = (tmp_path / "home").rglob("explain/*.md")
    assert "| layer2.0 forward |" in report.read_text()
