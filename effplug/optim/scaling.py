"""Learning rate and warm-up for a larger effective batch.

When a strategy multiplies the batch a step sees (``W`` data-parallel ranks, ``A`` accumulated micro-batches),
the base recipe's learning rate no longer fits. Two rules from the large-batch literature:

* ``"linear"`` (Goyal et al. 2017, Sec. 2.1): ``lr = lr_base * k`` with ``k = batch / base_batch``, for SGD
  and LARS, with a gradual warm-up (Sec. 2.2) because the first steps at ``k * lr`` diverge;
* ``"sqrt"`` (Krizhevsky 2014; You et al. 2020 for LAMB and Adam): ``lr = lr_base * sqrt(k)``.

Warm-up is kept constant in samples: ``base_warmup_steps * base_batch`` samples become
``ceil(that / batch)`` steps, and never fewer than ``min_warmup_steps`` when ``k > 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

RULES = ("linear", "sqrt")


@dataclass(frozen=True)
class BatchScaling:
    lr: float
    warmup_steps: int
    batch: int
    factor: float  # batch / base_batch


def effective_batch(per_device_batch: int, world_size: int = 1, accumulate: int = 1) -> int:
    """Samples per optimizer step: ``per_device_batch * world_size * accumulate``."""
    for name, value in (("per_device_batch", per_device_batch), ("world_size", world_size), ("accumulate", accumulate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: use an int >= 1")
    return per_device_batch * world_size * accumulate


def scale_for_batch(base_lr: float, base_batch: int, batch: int, rule: str = "linear", base_warmup_steps: int = 0,
                    min_warmup_steps: int = 0) -> BatchScaling:
    """The learning rate and warm-up steps for ``batch`` samples per step, from a recipe tuned at ``base_batch``."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: choose one of {RULES} (linear for SGD/LARS, sqrt for Adam/LAMB)")
    if not base_lr > 0 or not math.isfinite(base_lr):
        raise ValueError(f"base_lr={base_lr!r}: use a finite number > 0")
    for name, value in (("base_batch", base_batch), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: use an int >= 1 (samples per optimizer step)")
    factor = batch / base_batch
    lr = base_lr * (factor if rule == "linear" else math.sqrt(factor))
    warmup = math.ceil(base_warmup_steps * base_batch / batch)
    if factor > 1:
        warmup = max(warmup, min_warmup_steps)
    return BatchScaling(lr, warmup, batch, factor)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                    power: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr``, then (with ``total_steps``) polynomial decay to 0,
    as LARS's paper schedules it. Usable as ``configure_optimizers``'s scheduler or HF's ``optimizers=``."""
    if warmup_steps < 0 or (total_steps is not None and total_steps < max(warmup_steps, 1)):
        raise ValueError(f"warmup_steps={warmup_steps!r}, total_steps={total_steps!r}: use 0 <= warmup <= total")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None:
            return 1.0
        return max(0.0, 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
