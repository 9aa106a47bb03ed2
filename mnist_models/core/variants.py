"""The variant vocabulary: what a benchmark, a profile or a training run can switch, and its names.

A `Variant` is device x compile mode x precision x memory format, and the one place each switch
is applied (autocast, input layout, model placement, compile, synchronize).

Every name the project prints is rendered from fields by `render_tag` and read back by
`parse_tag`, never built or sliced by hand: run names (`simple-tensor-cpu-eager-bf16-cl-t1-s777`),
sweep specs (`tensor-eager-bf16-cl`), benchmark ids (`simple-cpu-compile-bf16-b100`) and trace
runs all use the same tokens, in the same order:

    model  mode  loader  device  compile  precision  cl  fast  t<threads>  r<ranks>  e<epochs>  b<batch>  lr<lr>
    schedule  to<target %>  s<seed>

The recipe (epochs, batch, learning rate, schedule: core/recipes.py) uses the same tokens, so a
recipe spec such as `e3-b200-lr0.004-onecycle` reads like a variant spec and shows in run names.

`fast` is the training path of nets.make_fast (pool before ReLU, in-place ReLU) with fused Adam:
the seed nets' function and weights, computed with less work.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..system.errors import DeviceError, UsageError
from .data import LOADERS
from .nets import MODELS

MODES = ("train", "forward")  # a profile or a harness workload: a whole train step, or inference
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("off", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
PRECISIONS = ("fp32", "bf16", "fp16")
# One token per compile mode. On a CPU there are no CUDA graphs, so max-autotune and its
# no-cudagraphs twin are the same compile there and a Variant folds them into "autotune".
COMPILE_TOKENS = {
    "off": "eager",
    "default": "compile",
    "max-autotune": "autotune",
    "max-autotune-no-cudagraphs": "autotunenocg",
    "reduce-overhead": "overhead",
}
_COMPILE_FROM_TOKEN = {token: mode for mode, token in COMPILE_TOKENS.items()}
_NUMBERED = {"threads": "t", "ranks": "r", "epochs": "e", "batch_size": "b", "seed": "s"}  # field -> token prefix
# Canonical order of the fields in a tag.
TAG_FIELDS = (
    "model",
    "mode",
    "loader",
    "device",
    "compile",
    "precision",
    "channels_last",
    "fast",
    "threads",
    "ranks",
    "epochs",
    "batch_size",
    "lr",
    "schedule",
    "target",
    "seed",
)
# How the learning rate moves during a run (core/recipes.py): the seed's is constant.
SCHEDULES = ("const", "onecycle", "cosine")


def _token(field: str, value) -> str | None:
    if value is None:
        return None
    if field == "compile":
        return COMPILE_TOKENS[value]
    if field == "channels_last":
        return "cl" if value else None
    if field == "fast":
        return "fast" if value else None
    if field in _NUMBERED:
        return f"{_NUMBERED[field]}{value}"
    if field == "lr":
        return f"lr{value:g}"
    if field == "target":
        return f"to{100 * value:g}"  # stop at this test accuracy, in percent: to91 = 0.91
    return str(value)


def render_tag(**fields) -> str:
    """Fields -> 'simple-tensor-cpu-eager-bf16-cl-s777'; fields left out or None are not named."""
    unknown = set(fields) - set(TAG_FIELDS)
    if unknown:
        raise ValueError(f"not a tag field: {', '.join(sorted(unknown))}")
    tokens = [_token(f, fields[f]) for f in TAG_FIELDS if f in fields]
    return "-".join(t for t in tokens if t)


_NUMBER = re.compile(r"^(t|r|e|b|s)(\d+)$")
_LR = re.compile(r"^lr(\d+(\.\d*)?(e-?\d+)?)$")
_TARGET = re.compile(r"^to(\d+(\.\d+)?)$")


def _parse_token(token: str) -> tuple[str, object] | None:
    if token in MODELS:
        return "model", token
    if token in LOADERS:
        return "loader", token
    if token in MODES:
        return "mode", token
    if token in DEVICES:
        return "device", token
    if token in _COMPILE_FROM_TOKEN:
        return "compile", _COMPILE_FROM_TOKEN[token]
    if token in PRECISIONS:
        return "precision", token
    if token == "cl":
        return "channels_last", True
    if token == "fast":
        return "fast", True
    number = _NUMBER.match(token)
    if number:
        field = {prefix: f for f, prefix in _NUMBERED.items()}[number.group(1)]
        return field, int(number.group(2))
    lr = _LR.match(token)
    if lr:
        return "lr", float(lr.group(1))
    if token in SCHEDULES:
        return "schedule", token
    target = _TARGET.match(token)
    if target and 0 < float(target.group(1)) <= 100:
        return "target", round(float(target.group(1)) / 100, 6)
    return None


def parse_tag(tag: str, allowed: tuple[str, ...] = TAG_FIELDS) -> dict:
    """'tensor-eager-bf16-cl' -> {'loader': 'tensor', 'compile': 'off', ...}; the inverse of render_tag.

    Only the fields in `allowed` may appear, each once; anything else is a UsageError naming the token.
    """
    fields: dict = {}
    for token in tag.split("-"):
        parsed = _parse_token(token)
        if parsed is None or parsed[0] not in allowed:
            raise UsageError(f"unknown token {token!r} in {tag!r}; tokens are: {_vocabulary(allowed)}")
        field, value = parsed
        if field in fields:
            raise UsageError(f"{tag!r} names the {field.replace('_', ' ')} twice")
        fields[field] = value
    return fields


def _vocabulary(allowed: tuple[str, ...]) -> str:
    words = {
        "model": "|".join(MODELS),
        "mode": "|".join(MODES),
        "loader": "|".join(LOADERS),
        "device": "|".join(DEVICES),
        "compile": "|".join(COMPILE_TOKENS.values()),
        "precision": "|".join(PRECISIONS),
        "channels_last": "cl",
        "fast": "fast",
        "threads": "t<N>",
        "ranks": "r<N>",
        "epochs": "e<N>",
        "batch_size": "b<N>",
        "lr": "lr<x>",
        "schedule": "|".join(SCHEDULES),
        "target": "to<percent>",
        "seed": "s<N>",
    }
    return ", ".join(words[f] for f in TAG_FIELDS if f in allowed)


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
    from ..system.machine import cpu_model

    return cpu_model()


@dataclass(frozen=True)
class Variant:
    """How a net runs: the one value that every mode (train, profile, tune, benchmarks, sweeps) carries.

    `device` may be the request 'auto' until a run starts (a config's default); `resolved()` turns it
    into cpu or cuda, once, and only a resolved variant places models or inputs.
    """

    device: str = "cpu"
    compile: str = "off"
    precision: str = "fp32"
    channels_last: bool = False
    fast: bool = False  # nets.make_fast + fused Adam: the same function, less work

    SWITCHES = ("compile", "precision", "channels_last", "fast")  # the variant without its device: what a spec names
    VARIANT_FIELDS = ("device", *SWITCHES)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.compile not in COMPILE_MODES:
            raise UsageError(f"unknown compile mode {self.compile!r}; choose one of: {', '.join(COMPILE_MODES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if not isinstance(self.channels_last, bool) or not isinstance(self.fast, bool):
            raise UsageError("channels_last and fast are true or false")
        if self.precision == "fp16" and self.device == "cpu":
            raise UsageError("fp16 autocast with GradScaler is a CUDA variant; on cpu use --precision bf16")
        if self.device == "cpu" and self.compile == "max-autotune-no-cudagraphs":
            object.__setattr__(self, "compile", "max-autotune")  # the same compile on a CPU: one name for it

    def resolved(self) -> Variant:
        """'auto' -> cuda when a GPU is visible, else cpu; 'cuda' without a GPU is a DeviceError."""
        return replace(self, device=resolve_device(self.device))

    @property
    def is_resolved(self) -> bool:
        return self.device != "auto"

    def fields(self) -> dict:
        """The variant's fields by name, as render_tag and JSON documents take them."""
        return {name: getattr(self, name) for name in self.VARIANT_FIELDS}

    @property
    def is_plain(self) -> bool:
        """The seed's own way to run: eager, fp32, contiguous, the seed layer order."""
        return self.compile == "off" and self.precision == "fp32" and not self.channels_last and not self.fast

    @property
    def tag(self) -> str:
        """e.g. 'cpu-compile-bf16-cl': the part of a benchmark id after the model name."""
        return render_tag(**self.fields())

    @classmethod
    def parse(cls, tag: str) -> Variant:
        """The inverse of `tag`: 'cpu-eager-bf16-cl' -> Variant('cpu', 'off', 'bf16', True, False)."""
        return cls(**parse_tag(tag, cls.VARIANT_FIELDS))

    @classmethod
    def from_json(cls, data: object) -> Variant:
        if not isinstance(data, dict):
            raise ValueError("variant must be an object")
        unknown = set(data) - set(cls.VARIANT_FIELDS)
        if unknown:
            raise ValueError(f"unknown variant field(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def _placed_on(self) -> str:
        if not self.is_resolved:
            raise UsageError("this variant's device is still 'auto': resolve it when the run starts (Variant.resolved)")
        return self.device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self._placed_on(), dtype=dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._placed_on(), non_blocking=True).contiguous(memory_format=self.memory_format)

    def place(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and memory format; the weights stay fp32 (autocast casts)."""
        return model.to(device=self._placed_on(), memory_format=self.memory_format)

    def compiled(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable to run: the model itself, or torch.compile of it (compiled lazily on first call)."""
        if self.compile == "off":
            return model
        return torch.compile(model, mode=None if self.compile == "default" else self.compile)

    def synchronize(self) -> None:
        """Benchmark timers know nothing of CUDA streams: every timed callable ends here."""
        if self.device == "cuda":
            torch.cuda.synchronize()
