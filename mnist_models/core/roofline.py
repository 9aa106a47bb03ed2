"""The roofline of a train step: per layer, what it must compute and move, and what the machine allows.

The anchor is the cache-aware roofline (Williams, Waterman and Patterson, "Roofline: an insightful
visual performance model", CACM 2009): a piece of work with F FLOPs that must move B bytes cannot
take less than max(F / compute roof, B / bandwidth roof), where the bandwidth roof is that of the
memory level its working set fits in (L2, the last-level cache, or DRAM). Its bound is the roof
that gives the larger time. Work measured far above that time (10x) yet itself tiny (under 0.2 ms a
step) is bound by neither: it is *overhead* (dispatch, launch, framework code), which no kernel can
fix. Work far above its roof and not tiny is a kernel that leaves its roof unused: its headroom.

The bytes are a model, the least traffic each op must cause if every tensor it touches is read or
written exactly once (activations in the run's element size, fp32 weights and optimizer state):

- conv / linear forward: input + output + weights + bias;
  backward: grad of output + input + weights read, grads of weights and bias written, and the grad
  of the input written (not for the first layer: images need no gradient);
- ReLU forward: input + output; backward (threshold_backward): grad of output + output read, grad
  of input written;
- max-pool forward: input + output + int64 indices; backward: grad of output + indices read, the grad
  of the input written whole (it is zero-filled);
- dropout forward: input + output + a one-byte mask; backward: grad + mask read, grad written;
- Adam: per parameter, the parameter, its grad and both moments read, parameter and moments written.

FLOPs: conv and linear 2 x multiply-adds (the nets' own count), backward twice forward (once for
the first layer); one per element for ReLU, three compares per pooled output, twelve per parameter
for Adam. These are small next to the convolutions; they are here so that the elementwise layers
get a point on the roofline at all.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .nets import traced_leaves

ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_BYTES = 4  # fp32 master weights, grads and Adam moments, whatever the autocast precision
ADAM_FLOPS_PER_PARAM = 12
OVERHEAD_FACTOR = 10  # measured above 10x the roofline time ...
OVERHEAD_SECONDS = 200e-6  # ... yet under 0.2 ms per step: the scale of dispatch, not of a slow kernel


@dataclass(frozen=True)
class Work:
    """One layer's forward or backward (or the optimizer's step) in a train step."""

    layer: str  # the module's name in the net, e.g. "layer1.0"; "optimizer" for Adam
    kind: str  # conv, linear, relu, pool, dropout, adam
    phase: str  # forward, backward, step
    flops: float
    bytes: float
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    param_shapes: tuple[tuple[int, ...], ...] = ()  # the optimizer's: its ops run once per parameter tensor

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else math.inf


def step_work(model: nn.Module, batch: int, precision: str = "fp32") -> list[Work]:
    """Every layer's forward and backward and the optimizer step of one train step of `model` at
    `batch`, in the order the forward pass runs them (the fast path's pool-before-ReLU included)."""
    e = ELEMENT_BYTES[precision]
    seen = traced_leaves(model, batch, (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Dropout))
    work: list[Work] = []
    first_weighted = True
    for name, module, shape_in, shape_out in seen:
        n_in, n_out = math.prod(shape_in), math.prod(shape_out)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            params = sum(p.numel() for p in module.parameters())
            if isinstance(module, nn.Conv2d):
                macs = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                flops = 2 * macs * n_out
            else:
                flops = 2 * module.in_features * module.out_features * shape_in[0]
            kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            work.append(Work(name, kind, "forward", flops, e * (n_in + n_out) + WEIGHT_BYTES * params, shape_in, shape_out))
            grad_in = 0 if first_weighted else e * n_in
            back_flops = flops if first_weighted else 2 * flops
            back_bytes = e * (n_out + n_in) + WEIGHT_BYTES * 2 * params + grad_in
            work.append(Work(name, kind, "backward", back_flops, back_bytes, shape_in, shape_out))
            first_weighted = False
        elif isinstance(module, nn.ReLU):
            work.append(Work(name, "relu", "forward", n_in, e * 2 * n_in, shape_in))
            work.append(Work(name, "relu", "backward", n_in, e * 3 * n_in, shape_in))
        elif isinstance(module, nn.MaxPool2d):
            work.append(Work(name, "pool", "forward", 3 * n_out, e * (n_in + n_out) + 8 * n_out, shape_in))
            work.append(Work(name, "pool", "backward", n_out, e * (n_out + n_in) + 8 * n_out, shape_in))
        elif isinstance(module, nn.Dropout):
            work.append(Work(name, "dropout", "forward", n_in, e * 2 * n_in + n_in, shape_in))
            work.append(Work(name, "dropout", "backward", n_in, e * 2 * n_in + n_in, shape_in))
    params = sum(p.numel() for p in model.parameters())
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    work.append(Work("optimizer", "adam", "step", ADAM_FLOPS_PER_PARAM * params, 7 * WEIGHT_BYTES * params, param_shapes=shapes))
    return work


# --- the machine's roofs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Roofs:
    """What a machine reaches at one thread count: compute (GFLOP/s, for one precision) and
    bandwidth per memory level (GB/s, read + write bytes), with the capacities that pick the level."""

    compute_gflops: float
    bandwidth_gbs: dict[str, float]  # "L2", "LLC", "DRAM"
    capacity_bytes: dict[str, int]  # "L2" (all the threads' L2 together), "LLC"
    threads: int
    compute_source: str = ""  # which op set the compute roof, e.g. "fp32 conv"

    def level_for(self, working_set: float) -> str:
        """The smallest memory level the bytes fit in."""
        for level in ("L2", "LLC"):
            if working_set <= self.capacity_bytes.get(level, 0) and level in self.bandwidth_gbs:
                return level
        return "DRAM"

    def to_json(self) -> dict:
        return {
            "compute_gflops": self.compute_gflops,
            "bandwidth_gbs": self.bandwidth_gbs,
            "capacity_bytes": self.capacity_bytes,
            "threads": self.threads,
            "compute_source": self.compute_source,
        }

    @classmethod
    def from_json(cls, data: dict) -> Roofs:
        return cls(
            float(data["compute_gflops"]),
            {k: float(v) for k, v in data["bandwidth_gbs"].items()},
            {k: int(v) for k, v in data["capacity_bytes"].items()},
            int(data["threads"]),
            str(data.get("compute_source", "")),
        )


@dataclass(frozen=True)
class Bound:
    """What the roofline allows a piece of work, and which roof binds it."""

    seconds: float  # the least time the roofs allow
    roof: str  # "compute", "L2", "LLC" or "DRAM"
    level: str  # the memory level its bytes fit in


def attainable(work: Work, roofs: Roofs) -> Bound:
    level = roofs.level_for(work.bytes)
    compute_s = work.flops / (roofs.compute_gflops * 1e9)
    memory_s = work.bytes / (roofs.bandwidth_gbs[level] * 1e9)
    return Bound(max(compute_s, memory_s), "compute" if compute_s >= memory_s else level, level)


def verdict(measured_s: float, bound: Bound) -> str:
    """The bound a measured time shows: the roof, or overhead when it is far above its roofline time
    and itself at the scale of an op's dispatch."""
    if measured_s > OVERHEAD_FACTOR * bound.seconds and measured_s < OVERHEAD_SECONDS:
        return "overhead"
    return bound.roof


# --- measuring the roofs ----------------------------------------------------------------------


def copy_bytes(numel: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a copy of `numel` elements moves: each element read once and written once."""
    return 2 * numel * torch.empty((), dtype=dtype).element_size()


def copy_op(size_bytes: int) -> tuple[Callable[[], torch.Tensor], int]:
    """A streaming copy whose source and destination take `size_bytes` together: (call, bytes moved)."""
    numel = max(1, size_bytes // 8)  # two fp32 tensors
    src = torch.rand(numel)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), copy_bytes(numel)


CONV_CHANNELS, CONV_SIDE = 64, 56


def conv_op(precision: str, device: str = "cpu", batch: int = 32) -> tuple[Callable[[], torch.Tensor], int]:
    """The ceiling's convolution: a layer in the nets' style (3x3, same padding) large enough for
    oneDNN's / cuDNN's best kernels, 64 -> 64 channels on 56x56 images in channels_last (the layout
    both libraries prefer), under inference_mode: (call, FLOPs per call). CUDA calls synchronize."""
    dtype = DTYPES[precision]
    x = torch.randn(batch, CONV_CHANNELS, CONV_SIDE, CONV_SIDE, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1, bias=False)
    conv = conv.to(device=device, dtype=dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def call() -> torch.Tensor:
        out = conv(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call, 2 * CONV_CHANNELS * 9 * CONV_CHANNELS * CONV_SIDE * CONV_SIDE * batch


def matmul_op(n: int, precision: str, device: str = "cpu") -> tuple[Callable[[], torch.Tensor], int]:
    """A square n x n matmul: (call, FLOPs per call). CUDA calls synchronize."""
    dtype = DTYPES[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def call() -> torch.Tensor:
        out = a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call, 2 * n**3


def _median_seconds(call: Callable[[], object], min_seconds: float = 0.2, rounds: int = 7) -> float:
    call()  # allocation, library start-up
    reps, elapsed = 1, 0.0
    while True:  # enough calls per round to be timed well
        start = time.perf_counter()
        for _ in range(reps):
            call()
        elapsed = time.perf_counter() - start
        if elapsed > min_seconds / rounds or reps >= 1 << 16:
            break
        reps *= 4
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def bandwidth_sizes(capacity: dict[str, int]) -> dict[str, int]:
    """Copy sizes (source + destination) that sit well inside L2 and the LLC, and far outside the LLC."""
    l2, llc = capacity.get("L2", 512 * 1024), capacity.get("LLC", 32 * 2**20)
    return {"L2": l2 // 2, "LLC": max(l2 * 2, llc // 2), "DRAM": max(256 * 2**20, 8 * llc)}


def monotone_bandwidth(copies: dict[str, float]) -> dict[str, float]:
    """Bandwidth roofs from measured copies (GB/s per level). A copy small enough for L2 is partly
    torch's per-call dispatch (microseconds): what fits in a level also fits in the next, so no
    level's roof is set below the level beyond it."""
    bandwidth = {"DRAM": copies["DRAM"]}
    bandwidth["LLC"] = max(copies["LLC"], bandwidth["DRAM"])
    bandwidth["L2"] = max(copies["L2"], bandwidth["LLC"])
    return bandwidth


def step_roofline(work: list[Work], roofs: Roofs) -> tuple[float, str]:
    """The least time the roofs allow a whole step (the sum over its work), and the roof that
    accounts for most of it."""
    by_roof: dict[str, float] = {}
    for w in work:
        bound = attainable(w, roofs)
        by_roof[bound.roof] = by_roof.get(bound.roof, 0.0) + bound.seconds
    return sum(by_roof.values()), max(by_roof, key=by_roof.get)


@dataclass
class RoofMeasurement:
    roofs: Roofs
    rates: dict[str, float] = field(default_factory=dict)  # every op measured: "fp32 conv" -> GFLOP/s, "copy L2" -> GB/s


def measure_roofs(precision: str, capacity: dict[str, int], threads: int, native_half: bool) -> RoofMeasurement:
    """The roofs at the current thread count: the best of a large matmul and a large convolution in
    `precision` (and fp32, where half precision has no fast path: autocast then is no faster than
    fp32's kernels), and a streaming copy at a size for each memory level. A few seconds."""
    rates: dict[str, float] = {}
    precisions = ["fp32"] + ([precision] if precision != "fp32" and native_half else [])
    for p in precisions:
        for name, (call, flops) in (("matmul", matmul_op(1024, p)), ("conv", conv_op(p))):
            rates[f"{p} {name}"] = flops / _median_seconds(call) / 1e9
    for level, size in bandwidth_sizes(capacity).items():
        call, moved = copy_op(size)
        rates[f"copy {level}"] = moved / _median_seconds(call) / 1e9
    source = max((k for k in rates if not k.startswith("copy")), key=rates.get)
    bandwidth = monotone_bandwidth({level: rates[f"copy {level}"] for level in ("L2", "LLC", "DRAM")})
    return RoofMeasurement(Roofs(rates[source], bandwidth, dict(capacity), threads, source), rates)
