"""RMSNorm (Zhang & Sennrich, 2019, eq. 4) as one fused pass forward and one backward, with the Gemma-style
``offset`` (the weight is ``offset + w``). Liger-Kernel's shape: Triton kernels, a torch reference with the
same contract, an ``autograd.Function`` and a module.

Contract, per row ``x`` of ``H`` elements. The two per-row scalars are computed in float64 and rounded to
fp32 once; everything elementwise is fp32::

    rstd  = fp32(1 / sqrt(Σ x² / H + eps))                             (float64)
    y     = (x · rstd) · (offset + w)                                  rounded to nearest in x.dtype
    coeff = fp32(Σ g(offset + w) x / H · rstd³)                        (float64)
    dx    = rstd · g(offset + w) − x · coeff
    dw    = fp32(Σ_rows fp32(g · (x · rstd)))               (fp32 products, float64 sums, in the same pass)

Why float64: torch's CPU ``sqrt`` is not correctly rounded in fp32 (it disagrees with numpy's on 16% of
inputs), and the Triton and torch row sums add in different orders. In float64 both differences sit ~2^-29
below an fp32 ulp, so the rounded scalars, and everything after them, agree bit for bit except in that
vanishing case. bf16 is rounded through its bit pattern. Autograd keeps ``x`` and one fp32 ``rstd`` per row.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def _forward_torch(x2d, weight, eps, offset):
    x = x2d.float()
    hidden = x.shape[1]
    x64 = x.double()
    mean_square = torch.einsum("ij,ij->i", x64, x64) / hidden  # a float64 dot per row
    eps = float(torch.tensor(eps, dtype=torch.float32))  # the kernel takes eps as an fp32 argument
    rstd = (1.0 / torch.sqrt(mean_square + eps)).float()
    y = (x * rstd[:, None]) * (weight.float() + offset)[None, :]
    return y.to(x2d.dtype), rstd


def _backward_torch(grad2d, x2d, weight, rstd, offset):
    x, g = x2d.float(), grad2d.float()
    hidden = x.shape[1]
    gw = g * (weight.float() + offset)[None, :]
    rstd64 = rstd.double()
    coeff = (torch.einsum("ij,ij->i", gw.double(), x.double()) / hidden * (rstd64 * rstd64 * rstd64)).float()
    dw = (g * (x * rstd[:, None])).double().sum(0)[None, :]  # one float64 "partial", as the kernel's are
    return (rstd[:, None] * gw - x * coeff[:, None]).to(x2d.dtype), dw


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, offset: float):
        x2d = x  # 2-D: the caller views it, so no view made here reaches autograd (in-place users need that)
        if dispatch.kernel_backend(x2d) == "triton":
            def run():
                return dispatch.triton_kernels().rms_norm_forward(x2d, weight.contiguous(), eps, offset)
        else:
            def run():
                return _forward_torch(x2d, weight, eps, offset)
        y, rstd = fused_op("rms_norm", "normalization", run, x2d, weight)
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.offset = offset
        return y

    @staticmethod
    def backward(ctx, grad):
        x2d, weight, rstd = ctx.saved_tensors
        grad2d = grad.contiguous()
        if dispatch.kernel_backend(grad2d) == "triton":
            def run():
                return dispatch.triton_kernels().rms_norm_backward(grad2d, x2d, weight.contiguous(), rstd,
                                                                   ctx.offset)
        else:
            def run():
                return _backward_torch(grad2d, x2d, weight, rstd, ctx.offset)
        dx, dw = fused_op("rms_norm_backward", "normalization", run, grad2d, x2d, weight, rstd)
        dw = dw.sum(0).float().to(weight.dtype)  # the per-program float64 partials, rounded once
        return dx, dw, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """``x / rms(x) · (offset + weight)`` over the last dimension, by the contract above (autograd-aware)."""
    dispatch.check_float_tensor(x)
    if weight.dim() != 1 or weight.numel() != x.shape[-1]:
        raise ValueError(f"weight must be 1-D over x's last dimension ({x.shape[-1]}); got {tuple(weight.shape)}")
    x2d = x.contiguous().view(-1, x.shape[-1])
    return RMSNormFunction.apply(x2d, weight, float(eps), float(offset)).view(x.shape)


class FusedRMSNorm(nn.Module):
    """``nn.Module`` form: ``FusedRMSNorm(hidden, eps=1e-6, offset=0.0)``; ``offset=1.0`` is Gemma's."""

    def __init__(self, hidden: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden) if offset == 0 else torch.zeros(hidden))
        self.eps, self.offset = eps, offset

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, self.offset)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, offset={self.offset}"
