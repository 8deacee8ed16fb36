"""``nn.LayerNorm`` modules (BERT's, RoBERTa's, GPT-2's and any other model's) run ``effplug.kernels.layer_norm``.
The module keeps its parameters, so optimizers, checkpoints and QAT wrappers see the same tensors."""

from __future__ import annotations

import logging
import types

from torch import nn

from effplug.kernels.layer_norm import layer_norm
from effplug.logs import log_once

log = logging.getLogger("effplug.fused")


def _layer_norm_forward(self, x):
    return layer_norm(x, self.weight, self.bias, self.eps)


def patch_layer_norm(model: nn.Module) -> list[str]:
    """Every affine ``nn.LayerNorm`` over one dimension; others are reported once and kept."""
    patched = []
    for name, module in model.named_modules():
        if type(module) is not nn.LayerNorm or hasattr(module, "_effplug_layer_norm"):
            continue
        if len(module.normalized_shape) != 1 or not module.elementwise_affine:
            log_once(log, f"layer_norm:{module.normalized_shape}:{module.elementwise_affine}",
                     "effplug.fused: layer_norm left %s unfused: it normalizes %s%s; the fused op takes an affine "
                     "norm over the last dimension", name, tuple(module.normalized_shape),
                     "" if module.elementwise_affine else " without weights")
            continue
        module.forward = types.MethodType(_layer_norm_forward, module)
        module._effplug_layer_norm = True
        patched.append(name)
    return patched
