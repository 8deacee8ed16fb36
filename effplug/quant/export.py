"""Export: integer weights, scales and zero-points as a plain state dict, and an integer-simulated model.

``export_quantized(model)`` returns ``{name: tensor}``: for every quantized layer ``L``,
``L.weight_int`` (codes), ``L.weight_scale``, ``L.weight_zero_point`` and, when its input is quantized,
``L.input_scale``, ``L.input_zero_point``, ``L.input_qmin``, ``L.input_qmax``; every other parameter and
buffer of the model as it is (biases, norms, ...). ``integer_model(model, exported)`` rebuilds the network
with layers that compute on those integers only: ``y = ((x_q - z_x) (*) (w_q - z_w)) s_x s_w + b``, the
integer product done exactly (float64 holds the integer sums), so it matches the fake-quant forward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from effplug import kernels
from effplug.quant.convert import quantized_layers
from effplug.quant.modules import (
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantMultiheadAttention,
)


def _codes_dtype(codes: torch.Tensor) -> torch.dtype:
    lo, hi = float(codes.min()), float(codes.max())
    return torch.int8 if -128 <= lo and hi <= 127 else (torch.uint8 if lo >= 0 and hi <= 255 else torch.int16)


@torch.no_grad()
def export_quantized(model: nn.Module) -> dict:
    """Integer weights, scales and zero-points (plus the model's other float state) as a plain dict.

    Call it in eval mode after training: activation ranges are the EMA or learned values eval uses.
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no quantized layers; call effplug.quant.quantize_model(model, config) first")
    out = {}
    owned = set()
    for name, layer in layers.items():
        if isinstance(layer, QuantMultiheadAttention):
            raise ValueError(f"integer export of nn.MultiheadAttention ({name!r}) is not supported yet; keep it in "
                             f"float for an exportable model (QATConfig(exclude=[{name!r}])) or use the fake-quant model")
        prefix = f"{name}." if name else ""
        owned.update(f"{prefix}{k}" for k in layer.state_dict().keys() if k != "bias")
        codes, scale, zero = layer.weight_quant.integer_codes(layer.weight)
        out[f"{prefix}weight_int"] = codes.to(_codes_dtype(codes))
        out[f"{prefix}weight_scale"] = scale.detach().float().clone()
        out[f"{prefix}weight_zero_point"] = torch.as_tensor(zero).float().clone()
        act = layer.act_quant
        if act is not None and act.enabled:
            if not bool(act.initialized):
                raise ValueError(f"layer {name!r} has not seen an activation yet; run a forward pass before exporting")
            probe = torch.zeros(2, 1, device=layer.weight.device)
            a_scale, a_zero = act.qparams(probe)
            qmin, qmax = act.code_range()
            out[f"{prefix}input_scale"] = a_scale.detach().float().reshape(()).clone()
            out[f"{prefix}input_zero_point"] = torch.as_tensor(a_zero).detach().float().reshape(()).clone()
            out[f"{prefix}input_qmin"] = torch.tensor(qmin)
            out[f"{prefix}input_qmax"] = torch.tensor(qmax)
    for key, value in model.state_dict().items():
        if key not in owned and key not in out:
            out[key] = value.detach().clone()
    return out


class IntegerLayer(nn.Module):
    """A layer that computes from exported integers: quantize the input, integer product, rescale."""

    def __init__(self, float_layer: nn.Module, state: dict, prefix: str):
        super().__init__()
        self.kind = ("embedding" if isinstance(float_layer, QuantEmbedding) else
                     "conv" if isinstance(float_layer, (QuantConv1d, QuantConv2d)) else
                     "conv_transpose" if isinstance(float_layer, QuantConvTranspose2d) else
                     "hf_conv1d" if float_layer.weight_channel_dim == 1 else "linear")
        self.conv = float_layer if self.kind in ("conv", "conv_transpose") else None
        self.embedding_args = (float_layer.padding_idx,) if self.kind == "embedding" else ()
        self.register_buffer("weight_int", state[f"{prefix}weight_int"])
        self.register_buffer("weight_scale", state[f"{prefix}weight_scale"])
        self.register_buffer("weight_zero_point", state[f"{prefix}weight_zero_point"])
        self.bias = state.get(f"{prefix}bias")
        self.input = None
        if f"{prefix}input_scale" in state:
            self.input = tuple(state[f"{prefix}input_{k}"] for k in ("scale", "zero_point", "qmin", "qmax"))

    def _output_scale(self, acc: torch.Tensor) -> torch.Tensor:
        """The weight scale laid out along the output channels of ``acc``."""
        scale = self.weight_scale.double()
        if scale.numel() == 1:
            return scale.reshape(())
        if self.kind == "conv_transpose":  # per out/groups channel: repeated for each group
            scale = scale.reshape(-1).repeat(self.conv.groups)
        if self.kind in ("conv", "conv_transpose"):
            return scale.reshape([1, -1] + [1] * (acc.dim() - 2))
        return scale.reshape(-1)

    def forward(self, x):
        centered_w = self.weight_int.double() - self.weight_zero_point.double()
        if self.kind == "embedding":
            return F.embedding(x, centered_w * self.weight_scale.double(), *self.embedding_args).float()
        dtype = x.dtype
        if self.input is not None:
            scale, zero, qmin, qmax = self.input
            codes = kernels.quantization_codes(x, scale, zero, int(qmin), int(qmax))
            x, x_scale = (codes - zero).double(), scale.double()  # exact integers
        else:
            x, x_scale = x.double(), torch.ones((), dtype=torch.float64, device=x.device)
        if self.kind == "linear":
            acc = F.linear(x, centered_w)
        elif self.kind == "hf_conv1d":
            acc = x @ centered_w
        elif self.kind == "conv_transpose":
            c = self.conv
            acc = F.conv_transpose2d(x, centered_w, None, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
        else:
            acc = self.conv._conv_forward(x, centered_w, None)
        out = acc * x_scale * self._output_scale(acc)
        if self.bias is not None:
            spatial = self.kind in ("conv", "conv_transpose")
            out = out + self.bias.double().reshape([1, -1] + [1] * (out.dim() - 2) if spatial else [-1])
        return out.to(dtype)


def integer_model(model: nn.Module, exported: dict) -> nn.Module:
    """A copy of ``model`` whose quantized layers compute from ``exported`` integers only (for parity tests)."""
    copied = copy.deepcopy(model).eval()
    layers = quantized_layers(copied)
    for name, layer in layers.items():
        prefix = f"{name}." if name else ""
        replacement = IntegerLayer(layer, exported, prefix)
        parent_name, _, child = name.rpartition(".")
        parent = copied.get_submodule(parent_name) if parent_name else copied
        setattr(parent, child, replacement)
    return copied


__all__ = ["IntegerLayer", "export_quantized", "integer_model"]
