"""Function-preserving rewrites of the nets' first block, checked and timed against the native one.

The first block is Conv2d(1 -> 32, 3x3, same padding) -> max-pool 2x2 (-> ReLU, pool-first as in
the fast path); the images need no gradient, so its backward is the weight and bias gradients
only. Issue 25 asked for a faster first convolution and pooling on CPUs without AMX. Each rewrite
here computes the same function (outputs and gradients checked against the native block, up to
float rounding) and is timed forward + backward in alternation with the native block, on this
machine's threads, channels_last as the fast path runs:

- native: torch's convolution (oneDNN) and max_pool2d, as nets.make_fast runs them;
- gemm: the convolution as one matrix product over 3x3 patches (im2col + addmm, written straight
  into channels_last order) and the weight gradient as one matrix product with those patches;
- argmax: as gemm, but the weight gradient read from the pooled gradient at each window's argmax
  (a quarter of the positions), so the pooled gradient is never scattered back to 28x28;
- densepool: the native convolution, then the pooling as four strided maxima forward and, backward,
  the gradient routed by equality masks (the first maximum of a window in row-major order takes it,
  as max_pool2d's argmax does): no int64 indices, no zero-filled gradient, but a dozen eager passes;
- compiled (with --with-compile): the convolution written as nine shifted multiply-adds, so that
  torch.compile (inductor) may fuse it with the pooling and the ReLU into one loop, forward and
  backward; its compile time is printed.

    python scripts/first_block.py [--batch 100] [--rounds 15] [--with-compile]

Prints each rewrite's median time and its ratio to the native block's in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mnist_models.system.allocator import describe, keep_freed_memory


def patches(x: torch.Tensor) -> torch.Tensor:
    """(B*784, 9): the 3x3 neighbourhood of every pixel (zero-padded), pixel-major."""
    b = x.shape[0]
    padded = F.pad(x.reshape(b, 28, 28), (1, 1, 1, 1))
    return padded.unfold(1, 3, 1).unfold(2, 3, 1).reshape(b * 784, 9)


class GemmBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, argmax_grad: bool):
        b = x.shape[0]
        cols = patches(x)
        conv = torch.addmm(bias, cols, weight.view(32, 9).t()).view(b, 28, 28, 32).permute(0, 3, 1, 2)
        pooled, index = torch.ops.aten.max_pool2d_with_indices(conv, [2, 2], [2, 2])
        ctx.argmax_grad = argmax_grad
        ctx.save_for_backward(cols, index, conv)
        return pooled

    @staticmethod
    def backward(ctx, grad):
        cols, index, conv = ctx.saved_tensors
        b = grad.shape[0]
        if ctx.argmax_grad:  # each pooled gradient times the patch at its window's argmax
            at = index.permute(0, 2, 3, 1).reshape(b, 196 * 32, 1).expand(b, 196 * 32, 9)
            chosen = torch.gather(cols.view(b, 784, 9), 1, at)
            weight = (chosen * grad.permute(0, 2, 3, 1).reshape(b, 196 * 32, 1)).view(b * 196, 32, 9).sum(0)
        else:
            full = torch.ops.aten.max_pool2d_with_indices_backward(grad, conv, [2, 2], [2, 2], [0, 0], [1, 1], False, index)
            weight = full.permute(0, 2, 3, 1).reshape(b * 784, 32).t().mm(cols)
        return None, weight.view(32, 1, 3, 3), grad.sum((0, 2, 3)), None


class DensePool(torch.autograd.Function):
    """Max-pool 2x2 / 2 without indices: maxima of four strided views; the gradient goes to the first
    maximum of each window (row-major), where max_pool2d's argmax sends it."""

    @staticmethod
    def forward(ctx, x):
        a, b, c, d = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
        out = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        a, b, c = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2]
        first = a == out
        second = (b == out) & ~first
        taken = first | second
        third = (c == out) & ~taken
        taken |= third
        zero = torch.zeros((), dtype=grad.dtype)
        full = torch.empty_like(x)
        full[:, :, 0::2, 0::2] = torch.where(first, grad, zero)
        full[:, :, 0::2, 1::2] = torch.where(second, grad, zero)
        full[:, :, 1::2, 0::2] = torch.where(third, grad, zero)
        full[:, :, 1::2, 1::2] = torch.where(taken, zero, grad)
        return full


def native(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(conv(x), 2, 2)


def shifted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The block with its convolution as nine shifted multiply-adds: elementwise work a compiler can fuse."""
    padded = F.pad(x, (1, 1, 1, 1))
    out = bias.view(1, -1, 1, 1)
    for i in range(3):
        for j in range(3):
            out = out + padded[:, :, i : i + 28, j : j + 28] * weight[:, :, i, j].view(1, -1, 1, 1)
    return F.max_pool2d(out, 2, 2)


REWRITES = {
    "gemm": lambda conv, x: GemmBlock.apply(x, conv.weight, conv.bias, False),
    "argmax": lambda conv, x: GemmBlock.apply(x, conv.weight, conv.bias, True),
    "densepool": lambda conv, x: DensePool.apply(conv(x)),
}


def forward_backward(block, conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    conv.zero_grad(set_to_none=True)
    out = F.relu(block(conv, x))
    out.backward(grad)
    return out.detach(), conv.weight.grad, conv.bias.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed block")
    parser.add_argument("--with-compile", action="store_true", help="also the compiled rewrite (tens of seconds to compile)")
    args = parser.parse_args()
    allocator = keep_freed_memory()  # as every process of the project runs
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    x[:, :, :6] = 0  # blank rows, as digits have: whole pool windows tie
    grad = torch.randn(args.batch, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    rewrites = dict(REWRITES)
    compile_seconds = None
    if args.with_compile:
        compiled = torch.compile(shifted)
        rewrites["compiled"] = lambda conv, x: compiled(x, conv.weight, conv.bias)
        started = time.perf_counter()
        forward_backward(rewrites["compiled"], conv, x, grad)  # compiles forward and backward
        compile_seconds = time.perf_counter() - started
    want = forward_backward(native, conv, x, grad)
    for name, block in rewrites.items():
        for got, expected in zip(forward_backward(block, conv, x, grad), want):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")

    def block_seconds(block) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            forward_backward(block, conv, x, grad)
        return (time.perf_counter() - start) / args.calls

    times: dict[str, list[float]] = {name: [] for name in ("native", *rewrites)}
    blocks = {"native": native, **rewrites}
    for name in times:
        block_seconds(blocks[name])  # warm-up
    for round_ in range(args.rounds):
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for name in order:
            times[name].append(block_seconds(blocks[name]))
    base = statistics.median(times["native"])
    print(f"first block forward + backward, batch {args.batch}, {torch.get_num_threads()} threads, channels_last")
    print(f"  allocator: {describe(allocator)}")
    for name, seconds in times.items():
        ratios = [s / n for s, n in zip(seconds, times["native"])]
        print(
            f"  {name:9s} {statistics.median(seconds) * 1e3:7.3f} ms   {statistics.median(ratios):5.2f}x the native block's time"
        )
    print(f"  (all outputs and gradients equal to the native block's; native median {base * 1e3:.3f} ms)")
    if compile_seconds is not None:
        print(f"  compiled: {compile_seconds:.1f} s to compile forward and backward")


if __name__ == "__main__":
    main()
