"""LayerNorm (Ba et al., 2016, eq. 4: ``y = (x − μ) / σ · w + b`` over the last dimension) as one fused pass
forward and one backward. Liger-Kernel's shape: Triton kernels, a torch reference with the same contract, an
``autograd.Function`` and a module.

Contract, per row ``x`` of ``H`` elements. The per-row scalars are computed in float64 and rounded to fp32
once; everything elementwise is fp32 (the reasons are those of ``effplug.kernels.rms_norm``)::

    mean  = fp32(Σ x / H)                                              (float64)
    rstd  = fp32(1 / sqrt(Σ (x − mean₆₄)² / H + eps))                  (float64, two passes)
    y     = ((x − mean) · rstd) · w + b                                rounded to nearest in x.dtype
    x̂     = (x − mean) · rstd
    c1    = fp32(Σ fp32(g w · x̂) / H),  c2 = fp32(Σ g w / H)           (fp32 products, float64 sums)
    dx    = rstd · ((g w − x̂ · c1) − c2)
    dw    = fp32(Σ_rows fp32(g · x̂)),  db = fp32(Σ_rows g)             (the same, in the same pass)

The products are rounded to fp32 before the float64 sums (not exact float64 products) because the backward
kernel's registers are full: this form is what lets it fit, with one small declared spill at H = 4096 on sm_90
(docs/fused-kernels.md, "Compile tier").

Autograd keeps ``x`` and two fp32 scalars per row (mean and rstd), as aten's native layer norm does.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def _forward_torch(x2d, weight, bias, eps):
    x = x2d.float()
    hidden = x.shape[1]
    x64 = x.double()
    mean64 = x64.sum(1) / hidden
    centered = x64 - mean64[:, None]
    var = torch.einsum("ij,ij->i", centered, centered) / hidden
    eps = float(torch.tensor(eps, dtype=torch.float32))  # the kernel takes eps as an fp32 argument
    mean, rstd = mean64.float(), (1.0 / torch.sqrt(var + eps)).float()
    y = ((x - mean[:, None]) * rstd[:, None]) * weight.float()[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(x2d.dtype), mean, rstd


def _normalized(x2d, mean, rstd):
    return (x2d.float() - mean[:, None]) * rstd[:, None]


def _backward_torch(grad2d, x2d, weight, mean, rstd, has_bias):
    g = grad2d.float()
    hidden = g.shape[1]
    xhat = _normalized(x2d, mean, rstd)
    gw = g * weight.float()[None, :]
    c1 = ((gw * xhat).double().sum(1) / hidden).float()
    c2 = (gw.double().sum(1) / hidden).float()
    dx = (rstd[:, None] * ((gw - xhat * c1[:, None]) - c2[:, None])).to(x2d.dtype)
    dw = (g * xhat).double().sum(0)[None, :]  # one float64 "partial", as the kernel's are
    return dx, dw, g.double().sum(0)[None, :] if has_bias else None


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        x2d = x  # 2-D: the caller views it, so no view made here reaches autograd (in-place users need that)
        if dispatch.kernel_backend(x2d) == "triton":
            def run():
                return dispatch.triton_kernels().layer_norm_forward(
                    x2d, weight.contiguous(), None if bias is None else bias.contiguous(), eps)
        else:
            def run():
                return _forward_torch(x2d, weight, bias, eps)
        parts = (x2d, weight) if bias is None else (x2d, weight, bias)
        y, mean, rstd = fused_op("layer_norm", "normalization", run, *parts)
        ctx.save_for_backward(x2d, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x2d, weight, mean, rstd = ctx.saved_tensors
        grad2d = grad.contiguous()
        if dispatch.kernel_backend(grad2d) == "triton":
            def run():
                return dispatch.triton_kernels().layer_norm_backward(grad2d, x2d, weight.contiguous(), mean, rstd,
                                                                     ctx.has_bias)
        else:
            def run():
                return _backward_torch(grad2d, x2d, weight, mean, rstd, ctx.has_bias)
        dx, dw, db = fused_op("layer_norm_backward", "normalization", run, grad2d, x2d, weight, mean, rstd)
        # the kernel's per-program float64 partials, summed in float64 and rounded once
        dw = dw.sum(0).float().to(weight.dtype)
        db = db.sum(0).float().to(weight.dtype) if ctx.has_bias else None
        return dx, dw, db, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps) · weight + bias`` over the last dimension, by the contract above."""
    dispatch.check_float_tensor(x)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != x.shape[-1]):
            raise ValueError(f"{name} must be 1-D over x's last dimension ({x.shape[-1]}); got {tuple(t.shape)}")
    x2d = x.contiguous().view(-1, x.shape[-1])
    return LayerNormFunction.apply(x2d, weight, bias, float(eps)).view(x.shape)


class FusedLayerNorm(nn.Module):
    """``nn.Module`` form: ``FusedLayerNorm(hidden, eps=1e-5, bias=True)``, parameters named as ``nn.LayerNorm``'s."""

    def __init__(self, hidden: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None
        self.eps = eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, bias={self.bias is not None}"
