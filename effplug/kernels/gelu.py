"""GELU (Hendrycks & Gimpel, 2016, eq. 1 and its tanh approximation) and GeGLU (Shazeer, 2020, eq. 5:
``gelu(a) · b``) as one pass forward and one backward. Liger-Kernel's shape: Triton kernels, a torch
reference with the same contract, an ``autograd.Function`` and modules.

Contract, per element, in float64, rounded once to fp32, then to nearest in the dtype::

    erf:   Φ = erfc(−a · C1) / 2 (erfc from ``ERFC``);   gelu = a Φ;   gelu' = Φ + a exp(−a²/2) · C2
    tanh:  u = K (a + A a³);  t = 1 − 2 / (exp(2u) + 1);  gelu = 0.5 a (1 + t)
           gelu' = 0.5(1 + t) + 0.5 a (1 − t²) K (1 + 3A a²)
    GeGLU: out = gelu(a) · b;   da = g · b · gelu'(a);   db = g · gelu(a)

``C1 = 1/√2``, ``C2 = 1/√(2π)``, ``K = √(2/π)`` and ``A = 0.044715`` are rounded to fp32 (``CONSTANTS``), so the
same literal means the same number in torch, in the interpreter and in a GPU kernel; the shift from the exact
constants is below 1e-7 relative. ``tanh`` is written through ``exp`` for the same reason (one ``exp`` both
sides round alike in float64; see effplug.kernels.swiglu for why float64). Φ comes from an erfc fit, not from
``1 + erf``: for a ≪ 0 that sum cancels, and the last-bit differences between torch's and the interpreter's
float64 ``erf`` then reach the fp32 result. The fit is within 1.2e-7 relative of the true Φ (F.gelu's own
fp32 error is of that size), and its ``exp`` has no such cancellation.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op

APPROXIMATIONS = ("none", "tanh")
CONSTANTS = {"C1": 0.7071067690849304, "C2": 0.3989422917366028, "K": 0.7978845834732056,
             "A": 0.044714998453855515, "3A": 0.13414500653743744}
# erfc(z) = t exp(−z² − c0 + t(c1 + t(c2 + ... + t c9))), t = 1 / (1 + z/2): Numerical Recipes' erfcc
# (Press et al., 2007, Sec. 6.2.2; fractional error < 1.2e-7 for z >= 0), coefficients rounded to fp32
ERFC = (1.265512228012085, 1.0000237226486206, 0.3740919530391693, 0.09678418189287186, -0.18628805875778198,
        0.27886807918548584, -1.1352039575576782, 1.488515853881836, -0.8221522569656372, 0.170872762799263)
PART = 1 << 16  # float64 parts, as in effplug.kernels.swiglu


def _value_and_slope(a64, tanh: bool):
    c = CONSTANTS
    if tanh:
        u = c["K"] * (a64 + c["A"] * (a64 * a64 * a64))
        t = 1.0 - 2.0 / (torch.exp(2.0 * u) + 1.0)
        value = 0.5 * a64 * (1.0 + t)
        slope = 0.5 * (1.0 + t) + 0.5 * a64 * (1.0 - t * t) * c["K"] * (1.0 + c["3A"] * (a64 * a64))
    else:
        z = a64.abs() * c["C1"]
        t = 1.0 / (1.0 + 0.5 * z)
        p = torch.full_like(t, ERFC[-1])
        for coefficient in reversed(ERFC[1:-1]):
            p = coefficient + t * p
        half_erfc = 0.5 * (t * torch.exp(-z * z - ERFC[0] + t * p))
        phi = torch.where(a64 < 0.0, half_erfc, 1.0 - half_erfc)
        value = a64 * phi
        slope = phi + a64 * torch.exp(-0.5 * (a64 * a64)) * c["C2"]
    return value, slope


def _forward_torch(a, b, tanh):
    out = torch.empty_like(a)
    flat_a, flat_out = a.reshape(-1), out.view(-1)
    flat_b = None if b is None else b.reshape(-1)
    for start in range(0, flat_a.numel(), PART):
        value, _ = _value_and_slope(flat_a[start:start + PART].double(), tanh)
        if flat_b is not None:
            value = value * flat_b[start:start + PART].double()
        flat_out[start:start + PART] = value.float()
    return out


def _backward_torch(grad, a, b, tanh):
    da = torch.empty_like(a)
    db = None if b is None else torch.empty_like(b)
    flat_g, flat_a, flat_da = grad.reshape(-1), a.reshape(-1), da.view(-1)
    for start in range(0, flat_a.numel(), PART):
        part = slice(start, start + PART)
        g = flat_g[part].double()
        value, slope = _value_and_slope(flat_a[part].double(), tanh)
        if b is not None:
            db.view(-1)[part] = (g * value).float()
            g = g * b.reshape(-1)[part].double()
        flat_da[part] = (g * slope).float()
    return da, db


class GELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, tanh: bool):
        a = a.contiguous()
        b = None if b is None else b.contiguous()
        backend = dispatch.triton_kernels().gelu_forward if dispatch.kernel_backend(a) == "triton" \
            else _forward_torch
        out = fused_op("geglu" if b is not None else "gelu", "elementwise", lambda: backend(a, b, tanh), a, b)
        ctx.save_for_backward(a, b)
        ctx.tanh = tanh
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        backend = dispatch.triton_kernels().gelu_backward if dispatch.kernel_backend(grad) == "triton" \
            else _backward_torch
        name = "geglu_backward" if b is not None else "gelu_backward"
        da, db = fused_op(name, "elementwise", lambda: backend(grad, a, b, ctx.tanh), grad, a, b)
        return da, db, None


def _check(a, approximate):
    dispatch.check_float_tensor(a)
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate={approximate!r}: use one of {', '.join(APPROXIMATIONS)} (as F.gelu)")


def gelu(a: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``F.gelu(a, approximate=...)`` by the contract above (autograd-aware)."""
    _check(a, approximate)
    return GELUFunction.apply(a, None, approximate == "tanh")


def geglu(a: torch.Tensor, b: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(a) · b`` by the contract above (autograd-aware)."""
    _check(a, approximate)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"geglu needs a and b of one shape and dtype; got {tuple(a.shape)} {a.dtype} and "
                         f"{tuple(b.shape)} {b.dtype}")
    return GELUFunction.apply(a, b, approximate == "tanh")


class FusedGELU(nn.Module):
    """Drop-in for ``nn.GELU(approximate=...)`` and HF's ``GELUActivation``/``NewGELUActivation``."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        _check(torch.zeros(1), approximate)
        self.approximate = approximate

    def forward(self, x):
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
