"""The recipe of a training run, as a variant: epochs, batch size, learning rate and its schedule.

The net's layers stay the seed's (its weights still load in the seed's classes) and evaluation stays
the same yardstick; only how the weights get there changes. A recipe spec uses the tokens of every
other name in the project (core/variants.py): `e3-b200-lr0.004-onecycle`; a token left out keeps the
seed's value, and `seed` names the seed's recipe itself (`e15-b100-lr0.001-const`).

Schedules, stepped once per optimizer step:

- `const`: the seed's constant rate.
- `onecycle`: torch's OneCycleLR (Smith & Topin, "Super-Convergence", 2017): up from lr/25 to lr over
  the first quarter of the steps, then cosine down to lr/25e4. Adam's betas stay the seed's.
- `cosine`: linear warm-up over the first 5% of the steps, then cosine decay to 0 (Loshchilov &
  Hutter, SGDR, 2017, without restarts; the warm-up of Goyal et al., 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..system.errors import UsageError
from .seed_recipe import SEED_BATCH_SIZE, SEED_EPOCHS, SEED_LR
from .variants import SCHEDULES, parse_tag, render_tag

RECIPE_FIELDS = ("epochs", "batch_size", "lr", "schedule")
SEED_SCHEDULE = "const"
ONECYCLE_WARM_SHARE = 0.25
COSINE_WARM_SHARE = 0.05


@dataclass(frozen=True)
class Recipe:
    epochs: int = SEED_EPOCHS  # the budget: a run to a target may stop sooner
    batch_size: int = SEED_BATCH_SIZE
    lr: float = SEED_LR  # Adam's rate; a schedule's peak
    schedule: str = SEED_SCHEDULE

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"a recipe's {name.replace('_', ' ')} must be a positive whole number, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"a recipe's learning rate must be positive, got {self.lr}")

    @property
    def spec(self) -> str:
        """Every field named: 'e15-b100-lr0.001-const' for the seed's."""
        return render_tag(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, schedule=self.schedule)

    @property
    def is_seed(self) -> bool:
        return self == SEED_RECIPE

    @classmethod
    def parse(cls, spec: str) -> Recipe:
        """'seed', or tokens of RECIPE_FIELDS in any order; the fields left out keep the seed's values."""
        if spec == "seed":
            return SEED_RECIPE
        return cls(**parse_tag(spec, RECIPE_FIELDS))

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in RECIPE_FIELDS}


SEED_RECIPE = Recipe()


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float] | None:
    """The multiplier of the peak rate at each step (None: constant), for torch's LambdaLR."""
    if schedule == "const":
        return None
    if schedule == "onecycle":
        warm = max(1, round(ONECYCLE_WARM_SHARE * total_steps))
        low, final = 1 / 25, 1 / 25e4  # OneCycleLR's div_factor and final_div_factor

        def onecycle(step: int) -> float:
            if step < warm:
                return low + (1 - low) * step / warm
            done = min(1.0, (step - warm) / max(1, total_steps - warm))
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * done))

        return onecycle
    if schedule == "cosine":
        warm = max(1, round(COSINE_WARM_SHARE * total_steps))

        def cosine(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            done = min(1.0, (step - warm) / max(1, total_steps - warm))
            return 0.5 * (1 + math.cos(math.pi * done))

        return cosine
    raise UsageError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int):
    """A LambdaLR that moves the optimizer's rate per step, or None for the seed's constant rate."""
    factor = lr_factor(schedule, total_steps)
    return None if factor is None else torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
