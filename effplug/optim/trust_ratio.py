"""The layer-wise trust ratio LARS and LAMB share, and the parameter groups that skip it.

Both papers scale each layer's step by ``||w|| / ||u||``, where ``u`` is that layer's update direction. A layer
whose weight or update is zero takes the plain step (ratio 1), as both reference implementations do. Biases
and normalization parameters are excluded from weight decay and from the ratio (LARS and LAMB as used for
ResNet-50 and BERT): their norms are tiny or constant, so the ratio would freeze or explode them.
"""

from __future__ import annotations

import torch

NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm)


def trust_ratio(weight_norm: torch.Tensor, update_norm: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """``coefficient * ||w|| / ||u||``, or 1 where either norm is zero (a tensor: no host sync)."""
    ratio = coefficient * weight_norm / update_norm.clamp_min(torch.finfo(update_norm.dtype).tiny)
    return torch.where((weight_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))


def exclude_bias_and_norm(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights with ``weight_decay`` and the trust ratio; biases, 1-D parameters and
    every normalization layer's parameters with neither (``weight_decay=0``, ``adapt=False``)."""
    no_adapt = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower():
            no_adapt.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if p.dim() <= 1 or name.endswith("bias"):
            no_adapt.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_adapt], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_adapt], "weight_decay": 0.0, "adapt": False}]

