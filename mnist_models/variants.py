"""What a benchmark, a profile or a training run can switch, and the one place each switch is applied.

A `Variant` is device x compile mode x precision x memory format. `make_train_step` and
`make_forward` build the step that the training loop, the benchmarks and the profiler all run, so
a number from one of them describes the code the others run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import DeviceError, UsageError

DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("off", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
PRECISIONS = ("fp32", "bf16", "fp16")
# Short tags for ids and run names: simple-cpu-compile-bf16-cl-b100
_COMPILE_TAGS = {
    "off": "eager",
    "default": "compile",
    "max-autotune": "autotune",
    "max-autotune-no-cudagraphs": "autotune",
    "reduce-overhead": "overhead",
}


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA GPU is visible to torch on this machine")
    return name


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from .machine import cpu_model

    return cpu_model()


@dataclass(frozen=True)
class Variant:
    device: str = "cpu"
    compile: str = "off"
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"a variant needs a resolved device (cpu or cuda), got {self.device!r}")
        if self.compile not in COMPILE_MODES:
            raise UsageError(f"unknown compile mode {self.compile!r}; choose one of: {', '.join(COMPILE_MODES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.device != "cuda":
            raise UsageError("fp16 autocast with GradScaler is a CUDA variant; on cpu use --precision bf16")

    @property
    def tag(self) -> str:
        """e.g. 'cpu-compile-bf16-cl': the part of a benchmark id after the model name."""
        parts = [self.device, _COMPILE_TAGS[self.compile], self.precision]
        return "-".join(parts + (["cl"] if self.channels_last else []))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device, dtype=dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def place(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and memory format; the weights stay fp32 (autocast casts)."""
        return model.to(device=self.device, memory_format=self.memory_format)

    def compiled(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable to run: the model itself, or torch.compile of it (compiled lazily on first call)."""
        if self.compile == "off":
            return model
        return torch.compile(model, mode=None if self.compile == "default" else self.compile)

    def synchronize(self) -> None:
        """Benchmark timers know nothing of CUDA streams: every timed callable ends here."""
        if self.device == "cuda":
            torch.cuda.synchronize()


def make_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, variant: Variant
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """forward + loss + backward + optimizer step; returns the detached loss (no host sync)."""
    run = variant.compiled(model)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if variant.precision == "fp16" else None

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with variant.autocast():
            loss = loss_fn(run(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step


def make_forward(model: nn.Module, variant: Variant) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inference: eval mode, inference_mode, autocast as the variant says."""
    model.eval()
    run = variant.compiled(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), variant.autocast():
            return run(x)

    return forward
