"""The seed's two MNIST CNNs, layer for layer (see docs/SEED.md), and their accounting.

Both nets take (B, 1, 28, 28) float images scaled to [0, 1] and return (B, 10) logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..system.errors import UsageError

IMAGE_SIZE = 28
NUM_CLASSES = 10


def traced_leaves(model: nn.Module, batch: int, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """(name, module, input shape, output shape) of every module of `kinds`, in the order one forward
    pass of blank images runs them: the nets' accounting reads the real shapes, never restates them."""
    seen: list[tuple[str, nn.Module, tuple, tuple]] = []
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, inputs, output) -> None:
        seen.append((names[module], module, tuple(inputs[0].shape), tuple(output.shape)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kinds)]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(batch, 1, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _conv_block(in_channels: int, out_channels: int, pool_padding: int = 0) -> nn.Sequential:
    """Conv3x3 (stride 1, same padding) -> ReLU -> MaxPool 2x2, as every seed layer is built."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2, padding=pool_padding),
    )


def _pooled(size: int, padding: int = 0) -> int:
    """Spatial size after MaxPool2d(2, 2, padding)."""
    return (size + 2 * padding - 2) // 2 + 1


class _Accounting:
    """Parameter and FLOP counts that every net answers for itself (cf. nanoGPT's get_num_params)."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def layer_flops(self, batch: int = 1) -> list[dict]:
        """Forward FLOPs of every Conv2d and Linear (2 x multiply-adds), with the shapes they see.

        Counted from the layers' real shapes in one forward pass of blank images, so it cannot
        drift from the architecture. Pooling, ReLU and bias adds are left out, as usual. The
        profiler's kernel tables look convolutions up here by (input shape, weight shape).
        """
        layers = []
        for name, module, input_shape, output_shape in traced_leaves(self, batch, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Conv2d):
                macs_per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                flops = 2 * macs_per_output * math.prod(output_shape)
            else:
                flops = 2 * module.in_features * module.out_features * input_shape[0]
            layers.append(
                {
                    "name": name,
                    "kind": type(module).__name__,
                    "flops": flops,
                    "input_shape": list(input_shape),
                    "weight_shape": list(module.weight.shape),
                    "output_shape": list(output_shape),
                }
            )
        return layers

    def flops_per_image(self) -> int:
        """Forward FLOPs for one image: convolutions and linear layers."""
        return sum(layer["flops"] for layer in self.layer_flops(batch=1))

    def train_flops_per_image(self) -> int:
        """FLOPs of forward + backward for one image, counted by torch.utils.flop_counter.

        Backward is about twice forward, less the input gradient of the first conv, which
        autograd skips because images need no gradient.
        """
        from torch.utils.flop_counter import FlopCounterMode

        batch = 2  # any batch: the count is linear in it
        device = next(self.parameters()).device
        x = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, device=device)
        counter = FlopCounterMode(display=False)
        with counter:
            self(x).sum().backward()
        self.zero_grad(set_to_none=True)
        return counter.get_total_flops() // batch


class SimpleCNN(_Accounting, nn.Module):
    """Two conv blocks and one linear layer: 50,186 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _conv_block(1, 32)  # 28x28 -> 14x14
        self.layer2 = _conv_block(32, 64)  # 14x14 -> 7x7
        side = _pooled(_pooled(IMAGE_SIZE))
        self.fc = nn.Linear(side * side * 64, NUM_CLASSES)  # 7*7*64 = 3136 -> 10
        nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(x)  # (B, 32, 14, 14)
        x = self.layer2(x)  # (B, 64, 7, 7)
        x = x.flatten(1)  # (B, 3136)
        return self.fc(x)  # (B, 10)


class DeepCNN(_Accounting, nn.Module):
    """Three conv blocks, a 625-wide hidden layer with dropout, and a classifier: 1,379,557 parameters."""

    def __init__(self, keep_prob: float = 0.5) -> None:
        super().__init__()
        self.layer1 = _conv_block(1, 32)  # 28x28 -> 14x14
        self.layer2 = _conv_block(32, 64)  # 14x14 -> 7x7
        self.layer3 = _conv_block(64, 128, pool_padding=1)  # 7x7 -> 4x4
        side = _pooled(_pooled(_pooled(IMAGE_SIZE)), padding=1)
        self.fc1 = nn.Linear(side * side * 128, 625)  # 4*4*128 = 2048 -> 625
        nn.init.xavier_uniform_(self.fc1.weight)
        self.layer4 = nn.Sequential(self.fc1, nn.ReLU(), nn.Dropout(p=1 - keep_prob))
        self.fc2 = nn.Linear(625, NUM_CLASSES)
        nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(x)  # (B, 32, 14, 14)
        x = self.layer2(x)  # (B, 64, 7, 7)
        x = self.layer3(x)  # (B, 128, 4, 4)
        x = x.flatten(1)  # (B, 2048)
        x = self.layer4(x)  # (B, 625)
        return self.fc2(x)  # (B, 10)


class PoolFirst(nn.Sequential):
    """A seed conv block (conv -> ReLU -> max-pool) computed as conv -> max-pool -> ReLU.

    ReLU and max-pooling commute exactly (both are monotone: max(relu(a), relu(b)) = relu(max(a, b))),
    so outputs are equal, and so are the gradients (max-pool routes each gradient to the same
    argmax, which ReLU then passes or stops alike); ReLU then touches 4x fewer elements. The
    children and their names stay the seed's, so the state_dict is the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, relu, pool = self
        return relu(pool(conv(x)))


def make_fast(model: SimpleCNN | DeepCNN) -> SimpleCNN | DeepCNN:
    """The `fast` variant's net, in place: pool-first conv blocks and in-place ReLUs (an in-place
    ReLU after a pool or a linear layer overwrites nothing autograd still needs). Same parameters,
    same state_dict keys: weights load into either form."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[2], nn.MaxPool2d):
            setattr(model, name, PoolFirst(*child))
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    return model


MODELS: dict[str, type[nn.Module]] = {"simple": SimpleCNN, "deep": DeepCNN}


def build_model(name: str) -> SimpleCNN | DeepCNN:
    """A freshly initialised net by name; the caller seeds the RNG first, as the seed does."""
    try:
        return MODELS[name]()
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
