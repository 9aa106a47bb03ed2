import math

import pytest
import torch
from torch import nn

from mnist_models.errors import UsageError
from mnist_models.nets import DeepCNN, SimpleCNN, build_model


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
