"""Quantized versions of ``nn.Linear``, ``nn.Conv1d/2d``, HF ``Conv1D`` and ``nn.Embedding``.

Each subclasses the layer it replaces (``isinstance`` checks in user code keep working) and reuses the same
``Parameter`` objects, so tied weights stay tied and an optimizer built afterwards sees every parameter.
The input activation (``act_quant``) and the weight (``weight_quant``) pass through fake quantizers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def is_hf_conv1d(module: nn.Module) -> bool:
    """HF GPT-2's ``Conv1D``: a linear layer with its weight stored as ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


class QuantMixin:
    """Shared by every quantized layer: built from a float layer, sharing its parameters."""

    weight_channel_dim = 0

    @classmethod
    def from_float(cls, module: nn.Module, weight_quant: nn.Module, act_quant: nn.Module | None):
        quantized = cls.__new__(cls)
        quantized.__dict__ = module.__dict__.copy()
        for slot in ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks",
                     "_backward_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            if slot in quantized.__dict__:
                quantized.__dict__[slot] = type(module.__dict__[slot])(module.__dict__[slot])
        quantized.float_class = type(module)
        quantized.weight_quant = weight_quant
        quantized.act_quant = act_quant
        return quantized

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x):
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv1d(QuantMixin, nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantEmbedding(QuantMixin, nn.Embedding):
    """Weight-only: an embedding's input is indices."""

    def forward(self, ids):
        return F.embedding(ids, self.quantized_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


_HF_CLASS_CACHE: dict = {}


def quant_class_for(module: nn.Module):
    """The quantized class replacing ``module``'s class, or None when it is not quantizable."""
    if isinstance(module, QuantMixin):
        return None
    if type(module) is nn.Linear:
        return QuantLinear
    if type(module) is nn.Conv2d:
        return QuantConv2d
    if type(module) is nn.Conv1d:
        return QuantConv1d
    if type(module) is nn.Embedding:
        return QuantEmbedding
    if is_hf_conv1d(module):
        base = type(module)
        if base not in _HF_CLASS_CACHE:

            def forward(self, x):
                shape = x.shape[:-1] + (self.nf,)
                out = torch.addmm(self.bias, self.quantized_input(x).reshape(-1, x.shape[-1]), self.quantized_weight())
                return out.reshape(shape)

            _HF_CLASS_CACHE[base] = type("QuantConv1D", (QuantMixin, base),
                                         {"forward": forward, "weight_channel_dim": 1, "__module__": __name__})
            globals()["QuantConv1D"] = _HF_CLASS_CACHE[base]  # so pickle finds it by name
        return _HF_CLASS_CACHE[base]
    return None
