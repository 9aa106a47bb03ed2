import math

import pytest
import torch
from torch import nn

from mnist_models.core.nets import DeepCNN, PoolFirst, SimpleCNN, build_model, make_fast
from mnist_models.system.errors import UsageError


def conv_flops(cin, cout, side):
    return 2 * cin * 9 * cout * side * side


def test_parameter_counts_match_the_seed():
    assert build_model("simple").num_params() == 50_186
    assert build_model("deep").num_params() == 1_379_557


def test_forward_flops_per_image_from_layer_shapes():
    simple = conv_flops(1, 32, 28) + conv_flops(32, 64, 14) + 2 * 3136 * 10
    deep = conv_flops(1, 32, 28) + conv_flops(32, 64, 14) + conv_flops(64, 128, 7) + 2 * 2048 * 625 + 2 * 625 * 10
    assert SimpleCNN().flops_per_image() == simple == 7_739_648
    assert DeepCNN().flops_per_image() == deep == 17_474_772


@pytest.mark.parametrize("name", ["simple", "deep"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_shape_and_finite(name, batch, channels_last):
    model = build_model(name).eval()
    x = torch.rand(batch, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


def test_layers_are_the_seeds():
    deep = DeepCNN()
    convs = [m for m in deep.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1), (1, 1)),
        (32, 64, (3, 3), (1, 1), (1, 1)),
        (64, 128, (3, 3), (1, 1), (1, 1)),
    ]
    pools = [m for m in deep.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(2, 2, 0), (2, 2, 0), (2, 2, 1)]
    assert [m.p for m in deep.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert (deep.fc1.in_features, deep.fc1.out_features, deep.fc2.out_features) == (2048, 625, 10)
    assert SimpleCNN().fc.in_features == 3136


def test_linear_weights_are_xavier_initialised():
    torch.manual_seed(0)
    fc = SimpleCNN().fc.weight
    xavier_bound = math.sqrt(6 / (3136 + 10))
    default_bound = 1 / math.sqrt(3136)  # what nn.Linear would give without the seed's init
    assert fc.abs().max() <= xavier_bound
    assert fc.abs().max() > 2 * default_bound


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    deep, x = DeepCNN(), torch.rand(4, 1, 28, 28)
    deep.eval()
    assert torch.equal(deep(x), deep(x))
    deep.train()
    assert not torch.equal(deep(x), deep(x))


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        build_model("resnet")


def _twins(name: str, channels_last: bool):
    """The seed net and its fast form with the same weights, in one memory format."""
    torch.manual_seed(0)
    seed = build_model(name)
    fast = build_model(name)
    fast.load_state_dict(seed.state_dict())  # the seed's weights load into the fast form as they are
    make_fast(fast)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return seed.to(memory_format=fmt), fast.to(memory_format=fmt), fmt


@pytest.mark.parametrize("name", ["simple", "deep"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_fast_path_computes_the_seed_nets_function_and_gradients(name, channels_last):
    seed, fast, fmt = _twins(name, channels_last)
    assert any(isinstance(m, PoolFirst) for m in fast.modules()) and not any(isinstance(m, PoolFirst) for m in seed.modules())
    torch.manual_seed(1)
    x = torch.rand(16, 1, 28, 28).contiguous(memory_format=fmt) - 0.3  # negative pixels too: whole pool windows below zero
    y = torch.randint(0, 10, (16,))
    for model in (seed, fast):
        model.eval()  # deep's dropout would draw differently
        nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(fast(x), seed(x), rtol=1e-5, atol=1e-6)
    for (key, a), (_, b) in zip(seed.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", ["simple", "deep"])
def test_fast_weights_load_into_the_seed_net_and_back(name):
    seed, fast, _ = _twins(name, False)
    assert list(fast.state_dict()) == list(seed.state_dict())
    back = build_model(name)
    back.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), seed.state_dict().values()))
    assert fast.num_params() == seed.num_params() and fast.flops_per_image() == seed.flops_per_image()
