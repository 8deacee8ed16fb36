"""Straight-through estimators (Bengio et al. 2013): a rounding in the forward pass, the identity in the backward.

``round_ste(v)`` and ``floor_ste(v)`` round; ``scale_grad(p, g)`` leaves ``p`` unchanged and multiplies its
gradient by ``g`` (LSQ's gradient scale, Esser et al. 2020, eq. 4); ``pow2_ste(s)`` rounds a scale up to a
power of two (shift-only backends).
"""

from __future__ import annotations

import torch


def round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def floor_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.floor(v) - v).detach()


def scale_grad(p: torch.Tensor, factor: float) -> torch.Tensor:
    """``p`` in the forward pass; its gradient multiplied by ``factor``."""
    return p * factor + (p - p * factor).detach()


def pow2_ste(scale: torch.Tensor) -> torch.Tensor:
    return scale + (torch.exp2(torch.ceil(torch.log2(scale))) - scale).detach()
