"""Vertical-layered once-QAT (Wu et al., TPAMI 2023): one set of weights serves every listed bit-width.

Weights get ``B = max(bit_widths)``-bit codes on a mid-rise grid, ``u_B = clamp(floor(w / s + 2^(B-1)),
0, 2^B - 1)``. Cascade downsampling maps each width to the next lower one by dropping its least significant
bit, ``u_{b-1} = floor(u_b / 2)``, so ``u_b = u_B >> (B - b)``: the ``b``-bit codes are the top ``b``
bit-planes of the ``B``-bit codes (the paper's basic layer plus ``b - min`` enhance layers). Dequantization
puts each code at the centre of the ``B``-bit codes it stands for, ``w_b = (u_b + 1/2 - 2^(b-1)) s 2^(B-b)``.
Training minimises the paper's multi-objective loss ``sum_b lambda_b L(f(x; w_b))`` (``multi_bit_loss``).
The step ``s`` is learned with LSQ's straight-through gradient and gradient scale.

BatchNorm keeps one set of running statistics per width, switched by ``set_bits`` (as in any-precision
networks, Jin et al. 2020): each width's activations have their own scale, and one shared running
variance fits none of them in eval. Affine BN parameters stay shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from effplug.quant import estimators
from effplug.quant.fake_quantizer import broadcast_channels
from effplug.quant.quantizer import Quantizer
from effplug.quant.ste import floor_ste, scale_grad


class NestedWeightQuantizer(Quantizer):
    """Weight fake quantizer whose bit-width is switched with ``bits``; all widths share ``step``."""

    learned = True
    estimator = "nested"
    role = "weight"

    def __init__(self, bit_widths: tuple, channel_dim: int | None = 0, channels: int = 1, gradient: str = "ste"):
        super().__init__()
        self.bit_widths = tuple(sorted(bit_widths))
        self.top = self.bit_widths[-1]
        self.register_buffer("active_bits", torch.tensor(self.top))  # a buffer: checkpoints keep the width
        self.channel_dim = channel_dim
        self.step = nn.Parameter(torch.ones(channels if channel_dim is not None else 1))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def bits(self) -> int:
        return int(self.active_bits)

    @bits.setter
    def bits(self, value: int) -> None:
        self.active_bits.fill_(value)

    def extra_repr(self) -> str:
        return f"bit_widths={list(self.bit_widths)}, bits={self.bits}"

    def _shape(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return broadcast_channels(w, v, self.channel_dim)

    @torch.no_grad()
    def _init_step(self, w: torch.Tensor) -> None:
        # OCTAV's clip for the middle width, expressed as the top width's step (clip = 2^(b-1) s_b)
        middle = self.bit_widths[len(self.bit_widths) // 2]
        clip = estimators.octav_clip(w, middle, self.channel_dim)
        self.step.copy_((clip / 2 ** (self.top - 1)).clamp_min(1e-8).reshape(self.step.shape))
        self.initialized.fill_(True)

    def top_codes(self, w: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return torch.clamp(floor_ste(w / step + 2 ** (self.top - 1)), 0, 2**self.top - 1)

    def codes(self, w: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Integer codes at ``bits`` by cascade downsampling from the top width (exact integers)."""
        bits = self.bits if bits is None else bits
        with torch.no_grad():
            u = self.top_codes(w.float(), self._shape(w, self.step.abs().clamp_min(1e-8)))
            for _ in range(self.top - bits):
                u = torch.floor(u / 2)
        return u

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        if not bool(self.initialized):
            self._init_step(w.detach().float())
        n = w.numel() / (w.shape[self.channel_dim] if self.channel_dim is not None else 1)
        shift = 2 ** (self.top - self.bits)
        # Width b works with the effective step s_b = s * shift. LSQ scales d/ds_b by g_b = 1/sqrt(N Q_P(b)); the
        # chain rule then multiplies it by the shift on the way to the shared s, so a 2-bit width of an 8-bit
        # model moved s by 64x its LSQ step and diverged in one SGD step (0.002 -> -0.04 -> 3.6). Scaling by
        # g_b / shift**2 gives s the update LSQ would give s_b, mapped back to s (our deviation, docs/once-qat.md).
        factor = 1.0 / (math.sqrt(n * max(2 ** (self.bits - 1) - 1, 1)) * shift**2)
        step = self._shape(w, scale_grad(self.step, factor).abs().clamp_min(1e-8))
        u = self.top_codes(w.float(), step)
        for _ in range(self.top - self.bits):  # cascade: drop one bit-plane per width
            u = floor_ste(u / 2)
        return ((u + 0.5 - 2 ** (self.bits - 1)) * step * shift).to(w.dtype)

    def integer_codes(self, w: torch.Tensor):
        """``(codes, scale, zero_point)``: value = (codes - zero_point) * scale, zero_point = 2^(b-1) - 1/2."""
        with torch.no_grad():
            codes = self.codes(w)
            scale = self._shape(w, self.step.abs().clamp_min(1e-8)) * 2 ** (self.top - self.bits)
            return codes, scale, torch.tensor(2 ** (self.bits - 1) - 0.5, device=w.device)


def nested_quantizers(model: nn.Module) -> list[NestedWeightQuantizer]:
    return [m for m in model.modules() if isinstance(m, NestedWeightQuantizer)]


def bit_widths_of(model: nn.Module) -> tuple:
    quantizers = nested_quantizers(model)
    if not quantizers:
        raise ValueError("this model has no once-QAT layers; convert it with QATConfig(bit_widths=[2, 3, 4, 8])")
    return quantizers[0].bit_widths


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _tracked_batchnorms(model: nn.Module) -> list:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


def prepare_width_statistics(model: nn.Module, bit_widths: tuple) -> None:
    """Give every BatchNorm one slot of running statistics per width (buffers, so checkpoints keep them).

    The live buffers (``running_mean``...) are the *same tensors* as the current width's slot, and a switch
    re-points them: no in-place copy, so a switch between forward and backward never touches a tensor
    autograd saved.
    """
    top = max(bit_widths)
    for bn in _tracked_batchnorms(model):
        if hasattr(bn, "effplug_width"):
            continue
        for b in bit_widths:
            for name in _BN_STATS:
                live = getattr(bn, name)
                bn.register_buffer(f"{name}_w{b}", live if b == top else live.detach().clone())
        bn.register_buffer("effplug_width", torch.tensor(top))
        bn.register_load_state_dict_post_hook(_realias_after_load)


def _point_live_statistics(bn: nn.Module, bits: int) -> None:
    for name in _BN_STATS:
        bn._buffers[name] = bn._buffers[f"{name}_w{bits}"]


def _realias_after_load(bn, incompatible_keys) -> None:
    _point_live_statistics(bn, int(bn.effplug_width))


def _switch_width_statistics(model: nn.Module, bits: int) -> None:
    for bn in _tracked_batchnorms(model):
        if hasattr(bn, "effplug_width") and int(bn.effplug_width) != bits:
            _point_live_statistics(bn, bits)
            bn.effplug_width.fill_(bits)


def set_bits(model: nn.Module, bits: int) -> nn.Module:
    """Switch every once-QAT layer of ``model`` (and its BatchNorm statistics) to ``bits``."""
    widths = bit_widths_of(model)
    if bits not in widths:
        raise ValueError(f"bits={bits!r} is not one of this model's bit_widths {list(widths)}")
    for q in nested_quantizers(model):
        q.bits = bits
    _switch_width_statistics(model, bits)
    return model


def multi_bit_loss(model: nn.Module, compute_loss: Callable[[], torch.Tensor],
                   weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """The multi-objective loss ``sum_b lambda_b L_b`` over the model's bit-widths (lambda_b = 1 by default).

    Runs ``compute_loss()`` once per width; returns ``(total, {bits: loss})`` and leaves the model at its
    widest setting. Memory holds one graph per width until ``backward``.
    """
    widths = bit_widths_of(model)
    total, per_width = None, {}
    try:
        for b in widths:
            set_bits(model, b)
            loss = compute_loss()
            per_width[b] = loss.detach()
            weighted = loss * (1.0 if weights is None else float(weights.get(b, 1.0)))
            total = weighted if total is None else total + weighted
    finally:
        set_bits(model, widths[-1])
    return total, per_width
