"""The variant grids of the three suites, as pytest params with readable ids.

Not a full cross product: on a 2-core CPU every torch.compile costs tens of seconds and bf16 runs
without a hardware path, so each suite lists the comparisons worth making (docs/DESIGN.md, Variants).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mnist_models.core.variants import Variant, render_tag
from mnist_models.system.machine import cpu_isa

HAVE_CUDA = torch.cuda.is_available()
NO_CUDA = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU on this machine")


@dataclass(frozen=True)
class Case:
    model: str
    variant: Variant
    batch: int
    loader: str = ""  # epoch suite only: "seed" (DataLoader) or "tensor"
    threads: int | None = None  # CPU intra-op threads for this case; None: the session's (torch's choice or --bench-threads)

    def __str__(self) -> str:
        return self.id

    @property
    def id(self) -> str:
        """Rendered from the case's fields by the project's one vocabulary (mnist_models.core.variants)."""
        return render_tag(
            model=self.model, loader=self.loader or None, **self.variant.fields(), threads=self.threads, batch_size=self.batch
        )


def case(
    model, device="cpu", compile="off", precision="fp32", cl=False, batch=100, loader="", quick=False, threads=None, fast=False
):
    variant = Variant(device, compile, precision, cl, fast)
    marks = []
    if device == "cuda":
        marks += [NO_CUDA, pytest.mark.cuda]
    if compile != "off":
        marks.append(pytest.mark.compile)
    if quick:
        marks.append(pytest.mark.quick)
    c = Case(model, variant, batch, loader, threads)
    return pytest.param(c, id=c.id, marks=marks)


MODELS = ("simple", "deep")
# Does a second CPU thread pay? Measured in the same run as the session's thread count (the sweeps
# train with --threads 1, so this also says what that costs). Pointless with one thread.
# (pytest_configure has applied --bench-threads before the suites are collected.)
SINGLE_THREAD = [1] if torch.get_num_threads() > 1 else []
# A CPU bf16 epoch is only worth its minutes where the CPU has bf16 hardware; elsewhere autocast
# falls back to a reference convolution, 6-14x slower than fp32 (system.machine.EMULATED_BF16_SLOWDOWN) (the train-step suite shows that).
CPU_HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_isa()))


def forward_cases() -> list:
    cases = []
    for m in MODELS:
        for b in (1, 100, 1000):
            cases += [case(m, batch=b, quick=b == 100), case(m, cl=True, batch=b)]
        cases += [case(m, cl=cl, batch=100, threads=t) for t in SINGLE_THREAD for cl in (False, True)]
        cases += [case(m, precision="bf16", batch=100), case(m, precision="bf16", cl=True, batch=100)]
        cases += [case(m, cl=True, fast=True, batch=b) for b in (1, 100, 1000)]  # pool-first, in-place ReLU
        cases += [case(m, compile="default", batch=b) for b in (100, 1000)]
        cases += [case(m, compile="max-autotune", batch=100)]
        for b in (1, 100, 1000):
            quick = b == 100  # the GPU check's subset: pytest bench -m "cuda and quick"
            cases += [
                case(m, "cuda", batch=b, quick=quick),
                case(m, "cuda", cl=True, batch=b, quick=quick),
                case(m, "cuda", precision="bf16", batch=b, quick=quick),
                case(m, "cuda", precision="fp16", cl=True, batch=b, quick=quick),
                case(m, "cuda", compile="default", batch=b, quick=quick),
                case(m, "cuda", compile="max-autotune", batch=b),
            ]
        cases += [case(m, "cuda", compile="reduce-overhead", batch=100, quick=True)]  # CUDA graphs
    return cases


def train_step_cases() -> list:
    cases = []
    for m in MODELS:
        cases += [
            case(m, batch=100, quick=True),
            case(m, cl=True, batch=100),
            case(m, precision="bf16", batch=100),
            case(m, precision="bf16", cl=True, batch=100),
            case(m, fast=True, batch=100),
            case(m, cl=True, fast=True, batch=100, quick=True),  # the fast training path (nets.make_fast + fused Adam)
            case(m, precision="bf16", cl=True, fast=True, batch=100),
            case(m, compile="default", batch=100),
            case(m, compile="max-autotune", batch=100),
        ]
        cases += [case(m, cl=cl, batch=100, threads=t) for t in SINGLE_THREAD for cl in (False, True)]
        cases += [case(m, batch=500), case(m, cl=True, batch=500)]
        for b in (100, 500):
            quick = b == 100
            cases += [
                case(m, "cuda", batch=b, quick=quick),
                case(m, "cuda", cl=True, batch=b, quick=quick),
                case(m, "cuda", precision="bf16", batch=b, quick=quick),
                case(m, "cuda", precision="bf16", cl=True, batch=b, quick=quick),
                case(m, "cuda", precision="fp16", batch=b),
                case(m, "cuda", precision="fp16", cl=True, batch=b, quick=quick),
                case(m, "cuda", compile="default", batch=b, quick=quick),
                case(m, "cuda", compile="max-autotune", batch=b),
            ]
        cases += [case(m, "cuda", compile="reduce-overhead", batch=100, quick=True)]  # CUDA graphs
        cases += [case(m, "cuda", precision="bf16", cl=True, fast=True, batch=100, quick=True)]
    return cases


def epoch_cases() -> list:
    cases = []
    for m in MODELS:
        for device in ("cpu", "cuda"):
            cases += [
                case(m, device, loader="seed", quick=device == "cpu"),
                case(m, device, loader="tensor"),
                case(m, device, cl=True, loader="tensor"),
            ]
        cases += [case(m, cl=True, loader="tensor", threads=t) for t in SINGLE_THREAD]
        cases += [case(m, cl=True, fast=True, loader="tensor")]
        if CPU_HAS_BF16:
            cases += [
                case(m, precision="bf16", cl=True, loader="tensor"),
                case(m, precision="bf16", cl=True, fast=True, loader="tensor"),
            ]
        cases += [case(m, "cuda", precision="bf16", cl=True, loader="tensor")]
    return cases
