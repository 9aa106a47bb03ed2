import pytest
import torch
from torch import nn

from mnist_models.core.data import Split, make_loader
from mnist_models.core.harness import build, real_batch
from mnist_models.core.nets import build_model
from mnist_models.core.variants import Variant
from mnist_models.runs.config import TrainConfig
from mnist_models.runs.records import load_weights, weights_state
from mnist_models.runs.train import SEED_EPOCH_LINE, evaluate, train
from mnist_models.system.atomic import save_torch
from mnist_models.system.errors import CheckpointError, DeviceError, TrainingDiverged, UsageError
from mnist_models.system.machine import EMULATED_BF16_SLOWDOWN

# On the CPU by name: bit-identical repeats need deterministic kernels, which CUDA has only when asked
# (test_cuda_repeats_are_bit_identical_when_deterministic below)
FAST = dict(dataset="mnist-5k", loader="tensor", epochs=1, measure_latency=False, variant=Variant("cpu"))


def quiet(line):
    pass


def test_seed_epoch_line_is_the_seeds_format():
    assert SEED_EPOCH_LINE.format(1, 0.2259391844) == "[Epoch:    1] cost = 0.225939184"
    assert SEED_EPOCH_LINE.format(15, 0.00727953995) == "[Epoch:   15] cost = 0.00727953995"


def test_short_training_run_learns(mnist5k):
    config = TrainConfig(model="simple", dataset="mnist-5k", loader="tensor", epochs=2)
    model, record = train(config, mnist5k, log=quiet)
    assert record.test_accuracy > 0.8  # chance is 0.1
    assert record.epochs[1].cost < record.epochs[0].cost
    assert (record.model.name, record.model.params, record.model.flops_per_image) == ("simple", 50_186, 7_739_648)
    assert (record.dataset.train, record.dataset.test) == (4000, 1000)
    assert [e.steps for e in record.epochs] == [40, 40]
    assert all(e.test_accuracy is not None for e in record.epochs)
    assert set(record.inference_ms) == {"1", "1000"}


@pytest.mark.parametrize("loader", ["seed", "tensor"])
def test_same_seed_same_losses_and_weights(small5k, loader):
    config = TrainConfig(model="deep", loader=loader, eval_every_epoch=False, **{k: v for k, v in FAST.items() if k != "loader"})
    model_a, run_a = train(config, small5k, log=quiet)
    model_b, run_b = train(config, small5k, log=quiet)
    assert run_a.epochs[0].cost == run_b.epochs[0].cost
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    _, run_c = train(TrainConfig(**{**config.__dict__, "seed": 778}), small5k, log=quiet)
    assert run_c.epochs[0].cost != run_a.epochs[0].cost


class _BrightnessProbe(nn.Module):
    """Predicts class 1 when the mean input exceeds 1.0: it can tell raw pixels from scaled ones."""

    def forward(self, x):
        bright = x.flatten(1).mean(1) > 1.0
        return torch.nn.functional.one_hot(bright.long(), 10).float()


def test_seed_style_evaluation_feeds_raw_pixels_scaled_feeds_unit_range():
    images = torch.full((30, 28, 28), 200, dtype=torch.uint8)
    split = Split(images, torch.ones(30, dtype=torch.long))
    assert evaluate(_BrightnessProbe(), split, "cpu", batch_size=7, scale=False) == 1.0  # 200 > 1
    assert evaluate(_BrightnessProbe(), split, "cpu", batch_size=7, scale=True) == 0.0  # 200/255 < 1


def test_seed_style_accuracy_differs_from_real_accuracy(small5k):
    model, record = train(TrainConfig(model="simple", **FAST), small5k, log=quiet)
    assert record.seed_style_accuracy == evaluate(model, small5k.test, "cpu", scale=False)
    assert record.test_accuracy == evaluate(model, small5k.test, "cpu", scale=True)
    assert record.seed_style_accuracy != record.test_accuracy


@pytest.mark.parametrize("name", ["simple", "deep"])
def test_the_fast_evaluation_is_the_same_yardstick(name, small5k, mnist5k):
    """channels_last, inference_mode and batches of 100 count the same correct images as the eager
    contiguous evaluation in batches of 1000, with both pixel scalings; the trained net is untouched."""
    model, _ = train(TrainConfig(model=name, **FAST), small5k, log=quiet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for scale in (True, False):
        slow = evaluate(model, mnist5k.test, "cpu", batch_size=1000, scale=scale, fast=False)
        assert evaluate(model, mnist5k.test, "cpu", scale=scale) == slow
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())  # its layout stays the training's


def test_evaluate_restores_train_mode(small5k):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    model.train()
    evaluate(model, small5k.test, "cpu")
    assert model.training


def test_nan_loss_raises_before_anything_is_written(small5k):
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1"):
        train(TrainConfig(model="simple", lr=1e30, **FAST), small5k, log=quiet)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(epochs=0), "epochs must be a positive whole number"),
        (dict(batch_size=0), "batch size must be a positive whole number"),
        (dict(batch_size=5000), "larger than the 1000 training images"),
        (dict(lr=-1.0), "learning rate must be positive"),
        (dict(model="lenet"), "unknown model"),
        (dict(loader="ffcv"), "unknown loader"),
    ],
)
def test_bad_config_is_a_usage_error(small5k, fields, message):
    with pytest.raises(UsageError, match=message):
        train(TrainConfig(**{**FAST, **fields}), small5k, log=quiet)


@pytest.mark.parametrize(
    "fields, message", [(dict(precision="fp8"), "unknown precision"), (dict(precision="fp16", device="cpu"), "fp16 autocast")]
)
def test_bad_variant_is_a_usage_error(fields, message):
    with pytest.raises(UsageError, match=message):
        Variant(**fields)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_device_error(small5k):
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        train(TrainConfig(**(FAST | {"variant": Variant(device="cuda")})), small5k, log=quiet)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_learns(mnist5k):
    _, record = train(
        TrainConfig(model="simple", epochs=2, dataset="mnist-5k", loader="tensor", variant=Variant(device="cuda")),
        mnist5k,
        log=quiet,
    )
    assert record.test_accuracy > 0.8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_repeats_are_bit_identical_when_deterministic(small5k, monkeypatch):
    monkeypatch.setenv("MNIST_BENCH_DETERMINISTIC", "1")  # autotuning off, deterministic algorithms on
    config = TrainConfig(model="deep", eval_every_epoch=False, **(FAST | {"variant": Variant("cuda")}))
    model_a, run_a = train(config, small5k, log=quiet)
    model_b, run_b = train(config, small5k, log=quiet)
    assert run_a.epochs[0].cost == run_b.epochs[0].cost
    assert run_a.machine["numerics"]["deterministic_algorithms"]
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_autocast_runs_the_convolutions_in_bf16_and_learns(small5k):
    variant = Variant(precision="bf16", channels_last=True)
    assert variant.tag == "cpu-eager-bf16-cl"
    work = build("simple", variant, "train")
    seen = []
    work.model.layer1[0].register_forward_hook(
        lambda module, inputs, output: seen.append((output.dtype, output.is_contiguous(memory_format=torch.channels_last)))
    )
    x, y = real_batch(small5k.train, 8, variant)
    work.step(x, y)
    assert seen == [(torch.bfloat16, True)]  # autocast ran the conv in bf16, in NHWC
    assert work.model.layer1[0].weight.dtype == torch.float32  # master weights stay fp32
    _, record = train(
        TrainConfig(model="simple", **(FAST | {"variant": Variant(device="cpu", precision="bf16", channels_last=True)})),
        small5k,
        log=quiet,
    )
    assert record.epochs[0].cost < 2.3  # below log(10), the loss of a uniform guess


def test_weights_round_trip_with_weights_only(small5k, tmp_path):
    model, _ = train(TrainConfig(model="simple", **FAST), small5k, log=quiet)
    path = save_torch(tmp_path / "w.pt", weights_state(model))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["fc.weight"], model.fc.weight.detach())
    loaded = load_weights("simple", path)
    assert evaluate(loaded, small5k.test, "cpu") == evaluate(model, small5k.test, "cpu")


def test_bad_checkpoint_is_a_checkpoint_error(tmp_path, small5k):
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load simple weights"):
        load_weights("simple", garbage)
    with pytest.raises(CheckpointError, match="no weights file"):
        load_weights("simple", tmp_path / "missing.pt")
    deep_weights = save_torch(
        tmp_path / "deep.pt", weights_state(train(TrainConfig(model="deep", **FAST), small5k, log=quiet)[0])
    )
    with pytest.raises(CheckpointError):
        load_weights("simple", deep_weights)


def test_half_precision_without_native_bf16_warns_before_training(small5k, monkeypatch, capsys):
    from mnist_models.system import machine

    monkeypatch.setattr(machine, "cpu_isa", lambda: ["avx2", "avx512f", "avx512_bf16"])
    assert machine.emulated_half_warning("cpu", "bf16") is None  # native: no warning
    monkeypatch.setattr(machine, "cpu_isa", lambda: ["avx2", "fma"])  # a Zen 3: no AVX-512 BF16, no AMX
    assert machine.emulated_half_warning("cpu", "fp32") is None
    train(TrainConfig(model="simple", **(FAST | {"variant": Variant(device="cpu", precision="bf16")})), small5k, log=quiet)
    err = capsys.readouterr().err
    assert "WARNING: bf16 on this CPU is emulated" in err and EMULATED_BF16_SLOWDOWN in err


@pytest.mark.parametrize("name", ["simple", "deep"])
def test_the_fast_train_step_follows_the_seed_steps(name, small5k):
    """Pool-first nets, in-place ReLU and fused Adam: after a few steps from one seed the weights are
    the seed path's, up to float rounding (Adam's fused kernel orders its arithmetic differently)."""
    x, y = real_batch(small5k.train, 64, Variant())
    works = [build(name, Variant(fast=fast), "train", seed=3) for fast in (False, True)]
    for work in works:
        work.model.eval()  # deep's dropout: no random masks, so both paths see the same function
        for _ in range(5):
            work.step(x, y)
    (seed_key, seed_state), (fast_key, fast_state) = [(list(w.model.state_dict()), w.model.state_dict()) for w in works]
    assert seed_key == fast_key
    for key in seed_key:
        torch.testing.assert_close(fast_state[key], seed_state[key], rtol=1e-3, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    assert works[1].optimizer.defaults["fused"] and not works[0].optimizer.defaults.get("fused")


def test_train_is_the_seeds_own_loop_to_the_bit(small5k):
    """The seed's loop written out plainly beside train(): torch.manual_seed(777), the net, Adam 1e-3,
    the seed's shuffling DataLoader, zero_grad / forward / cross-entropy / backward / step. With the
    seed's recipe, train() (its job, schedule and loader machinery included) must end with the same
    weights to the bit and print the same epoch costs: no restructuring may change a seed run."""
    config = TrainConfig(model="deep", dataset="mnist-5k", epochs=2, measure_latency=False, variant=Variant("cpu"))
    model, record = train(config, small5k, log=quiet)

    torch.manual_seed(777)
    net = build_model("deep")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    loader = make_loader("seed", small5k.train, 100)
    costs = []
    for _ in range(2):
        avg_cost = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            cost = nn.functional.cross_entropy(net(x), y)
            cost.backward()
            optimizer.step()
            avg_cost += float(cost.detach()) / len(loader)
        costs.append(avg_cost)

    assert [e.cost for e in record.epochs] == pytest.approx(costs, rel=1e-6)  # summed in another order
    for name, value in net.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
