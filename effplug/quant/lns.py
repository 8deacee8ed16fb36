"""Logarithmic number system (LNS) for LNS-Madam (Zhao et al., IEEE Trans. Computers 71(12), 2022).

A value is a sign and an integer log-magnitude code ``e``: ``|x| = scale * 2^(-e / gamma)`` for
``e in [0, 2^(bits-1) - 2]``, and the top code ``2^(bits-1) - 1`` means zero. So ``bits=8`` is 1 sign bit and
7 code bits; ``gamma`` sets the base ``2^(1/gamma)`` (grid points per octave). ``scale`` is the largest
magnitude (one per tensor). Nearest rounding in the log domain keeps the relative error of representable
values within ``2^(1/(2 gamma)) - 1``; magnitudes below the smallest level ``scale * 2^(-(2^(bits-1)-2)/gamma)``
round to that level or to zero, whichever is nearer in value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.options import checks_keywords, name_patterns
from effplug.quant.quantizer import Quantizer


@dataclass(frozen=True)
class LNSFormat:
    bits: int = 8
    gamma: int = 8

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 3 <= self.bits <= 16:
            raise ValueError(f"bits={self.bits!r} is not supported; use an integer from 3 to 16 (8 is LNS-Madam's)")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, int) or self.gamma < 1:
            raise ValueError(f"gamma={self.gamma!r} must be a positive integer (grid points per octave)")

    @property
    def zero_code(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def max_code(self) -> int:
        """The largest code of a nonzero magnitude (the smallest magnitude)."""
        return self.zero_code - 1

    @property
    def relative_error_bound(self) -> float:
        return 2.0 ** (1.0 / (2 * self.gamma)) - 1.0

    def encode(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(negative, codes, scale)``: bool signs, int16 codes, fp32 scale (default: max|x|)."""
        xf = x.detach().float()
        scale = xf.abs().amax().clamp_min(torch.finfo(torch.float32).tiny) if scale is None else scale.float()
        ratio = (xf.abs() / scale).clamp_min(1e-38)
        codes = torch.round(-torch.log2(ratio) * self.gamma).clamp(0, self.max_code)
        smallest = scale * 2.0 ** (-self.max_code / self.gamma)
        codes = torch.where(xf.abs() < smallest / 2, torch.full_like(codes, self.zero_code), codes)
        return xf < 0, codes.to(torch.int16), scale

    def decode(self, negative: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        magnitude = scale * torch.exp2(-codes.float() / self.gamma)
        magnitude = torch.where(codes == self.zero_code, torch.zeros_like(magnitude), magnitude)
        return torch.where(negative, -magnitude, magnitude)


def lns_quantize(x: torch.Tensor, bits: int = 8, gamma: int = 8) -> torch.Tensor:
    """Round ``x`` to the nearest (in log2) point of the LNS grid; same shape and dtype."""
    fmt = LNSFormat(bits, gamma)
    return fmt.decode(*fmt.encode(x)).to(x.dtype)


class _LNSRoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt):
        return fmt.decode(*fmt.encode(x)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _LNSGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt):
        ctx.fmt = fmt
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.fmt.decode(*ctx.fmt.encode(grad)).to(grad.dtype), None


class LNSQuantizer(Quantizer):
    """Rounds a tensor to the LNS grid in the forward pass (straight-through backward)."""

    def __init__(self, fmt: LNSFormat):
        super().__init__()
        self.fmt = fmt
        self.bits = fmt.bits

    def forward(self, x):
        return _LNSRoundSTE.apply(x, self.fmt) if self.enabled else x


@checks_keywords
@dataclass(frozen=True)
class LNSConfig:
    """What ``prepare_lns`` converts: the LNS grid (``bits``, ``gamma``), which tensors, and which layers not."""

    bits: int = 8
    gamma: int = 8
    weights: bool = True
    activations: bool = False
    gradients: bool = False
    exclude: tuple = ()

    def __post_init__(self):
        LNSFormat(self.bits, self.gamma)  # validates both
        object.__setattr__(self, "exclude", name_patterns(self.exclude or ()))
        if not (self.weights or self.activations or self.gradients):
            raise ValueError("nothing to quantize: set weights, activations or gradients to True")

    @property
    def format(self) -> LNSFormat:
        return LNSFormat(self.bits, self.gamma)


def prepare_lns(model: torch.nn.Module, config: LNSConfig | None = None, **kwargs) -> torch.nn.Module:
    """LNS-Madam's model side: layer weights (and optionally inputs and output gradients) on the LNS grid.

    ``prepare_lns(model, LNSConfig(bits=8))`` or ``prepare_lns(model, bits=8, ...)``. Pair it with
    ``effplug.optim.LNSMadam``, which keeps the stored weights on the same grid. Returns ``model``.
    """
    from effplug.options import build_config
    from effplug.quant.convert import LayerPlan, replace_layers, select_compute_layers
    from effplug.quant.coverage import report_coverage

    if isinstance(config, int) and not isinstance(config, bool):  # prepare_lns(model, 8): bits, positionally
        kwargs, config = {"bits": config, **kwargs}, None
    config = build_config(LNSConfig, "prepare_lns", config, **kwargs)
    fmt, bits, exclude = config.format, config.bits, config.exclude
    weights, activations, gradients = config.weights, config.activations, config.gradients
    names, left = select_compute_layers(model, exclude, technique="LNS")
    if not names:
        raise ValueError("no layers to quantize: nn.Linear, nn.Conv1d/2d or HF Conv1D needed")

    def build(plan, module, cls):
        weight_quant = LNSQuantizer(fmt)
        weight_quant.set_enabled(weights)
        return weight_quant, (LNSQuantizer(fmt) if activations else None)

    replace_layers(model, [LayerPlan(n, "", bits, bits if activations else None) for n in names], build)
    model._effplug_coverage = report_coverage(model, "LNS", names, left)
    if gradients:
        for n in names:
            model.get_submodule(n).register_forward_hook(
                lambda module, args, output: _LNSGradient.apply(output, fmt) if output.requires_grad else None)
    return model
