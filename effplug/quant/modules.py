"""Quantized versions of ``nn.Linear``, ``nn.Conv1d/2d``, ``nn.ConvTranspose2d``, HF ``Conv1D`` and ``nn.Embedding``.

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


class QuantConvTranspose2d(QuantMixin, nn.ConvTranspose2d):
    """A U-Net's up-sampling layer. Its weight is ``[in, out / groups, kH, kW]``, so output channels are dim 1."""

    weight_channel_dim = 1

    def forward(self, x, output_size=None):
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return F.conv_transpose2d(self.quantized_input(x), self.quantized_weight(), self.bias, self.stride,
                                  self.padding, output_padding, self.groups, self.dilation)


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
    if type(module) is nn.ConvTranspose2d:
        return QuantConvTranspose2d
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


class QuantMultiheadAttention(QuantMixin, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fake-quantized projections.

    ``F.multi_head_attention_forward`` takes the projection weights as arguments, so the packed q/k/v weight
    (``in_proj_weight``, through ``weight_quant``) and the output projection's weight (``out_weight_quant``)
    pass through their quantizers first; the query (``act_quant``) and, in cross-attention, the key/value
    memory (``memory_quant``) are quantized at the input. The attention output that enters ``out_proj`` is
    formed inside torch's function and stays in float (the conversion report says so).
    """

    out_weight_quant: nn.Module
    memory_quant: nn.Module | None

    @classmethod
    def from_float(cls, module, weight_quant, act_quant, out_weight_quant=None, memory_quant=None):
        quantized = super().from_float(module, weight_quant, act_quant)
        quantized.out_weight_quant = out_weight_quant
        quantized.memory_quant = memory_quant
        # A forward pre-hook keeps nn.TransformerEncoderLayer off its fused eval fast path, which reads the float
        # weights directly and would skip quantization without a word.
        quantized.register_forward_pre_hook(_keeps_the_quantized_path)
        return quantized

    @property
    def weight(self) -> torch.Tensor:  # what export and the quantizer builders read
        return self.in_proj_weight

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        same_kv = key is value
        self_attention = query is key and same_kv
        query = self.quantized_input(query)
        if self_attention:
            key = value = query
        elif self.memory_quant is not None:
            key = self.memory_quant(key)
            value = key if same_kv else self.memory_quant(value)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        out_weight = self.out_weight_quant(self.out_proj.weight) if self.out_weight_quant is not None \
            else self.out_proj.weight
        output, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.quantized_weight(), self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, out_weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if self.batch_first and batched:
            output = output.transpose(1, 0)
        return output, weights


def _keeps_the_quantized_path(module, args):
    return None


def attention_class_for(module: nn.Module):
    """``QuantMultiheadAttention`` for an ``nn.MultiheadAttention`` with one packed q/k/v weight, else None."""
    if type(module) is nn.MultiheadAttention and module._qkv_same_embed_dim:
        return QuantMultiheadAttention
    return None
