"""Calibration (GACT, Chen et al. 2022, Sec. 4; COMET's bound tightening): each saved tensor's effect on the
gradient, measured on the retained graph of one step, one backward per tensor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from effplug.kernels.grad_error import squared_error


@dataclass
class Measurement:
    """One calibration probe: only tensor ``slot`` compressed; squared gradient error against the exact one."""

    slot: int
    numel: int
    sq_error: float  # ||g_l - g||^2 over all parameters
    ref_sq_norm: float  # ||g||^2
    rel_sq_error: float = 0.0  # sum over parameter tensors p of ||g_l,p - g_p||^2 / ||g_p||^2


def measure_gradient_effects(loss: torch.Tensor, params: list, recorded: list, set_probe: Callable[[int], None]
                             ) -> list[Measurement]:
    """One backward with every tensor at its reference encoding, then one per tensor with only that tensor
    re-encoded by the method (``set_probe(slot)`` tells the unpack hook which): the other tensors decode
    identically in both, so the difference is that tensor's alone."""
    reference = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    reference_norms = [squared_error(g, g)[1] for g in reference if g is not None]
    ref_sq = float(torch.stack(reference_norms).sum()) if reference_norms else 0.0
    measurements = []
    slots = {s.slot: s for s in recorded}
    try:
        for slot, saved in sorted(slots.items()):
            set_probe(slot)
            probed = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            sums = [squared_error(a, b) for a, b in zip(probed, reference, strict=True) if a is not None]
            errors = torch.stack(sums).tolist() if sums else []  # one host sync per probe, not two per parameter
            err = sum(e for e, _ in errors)
            rel = sum(e / r for e, r in errors if r > 0)
            measurements.append(Measurement(slot, math.prod(saved.shape), err, ref_sq, rel))
    finally:
        set_probe(-1)
    return measurements
