"""Scaled masked softmax with mask-free dropout, for eager attention (LightSeq2, Wang et al., SC'22, Sec. 3.1:
one kernel for scale, mask, softmax and dropout; the dropout mask regenerated in backward, never stored).
Liger-Kernel's shape: Triton kernels, a torch reference with the same contract, an ``autograd.Function``.

Contract for scores ``S [B, H, Q, K]``, an additive mask ``M`` broadcastable to it, per row of K::

    s   = fp32(S) · scale + fp32(M)                                      (fp32)
    y   = fp32(exp(s − max s) / Σ exp(s − max s))   rounded to the probabilities' dtype   (float64 inside)
    out = keep ? y · 1/(1 − p) : 0,    keep = (philox(seed, r·W + c) >> 8) · 2^-24 >= p,   W = K rounded up to 4
    dy  = keep ? g · 1/(1 − p) : 0,    ds = fp32(y (dy − Σ dy y) · scale)                    (float64 inside)

Autograd keeps ``y`` only: no mask and no scaled scores (the unfused chain keeps the softmax output and a
one-byte dropout mask). The Triton kernels and the torch reference agree bit for bit (float64 inside: see
effplug.kernels.swiglu for why).
"""

from __future__ import annotations

import torch

from effplug.kernels import dispatch
from effplug.kernels.philox import SEED_LIMIT, random_words
from effplug.kernels.regions import fused_op

PART = 1 << 18  # elements per float64 part of the torch path


def _keep(seed, rows, n_cols, start_row, p, device):
    width = -(-n_cols // 4) * 4
    words = random_words(seed, rows * width, device, start=start_row * width).view(rows, width)[:, :n_cols]
    return (words >> 8).to(torch.float32) * (1.0 / 16777216.0) >= p


def _broadcast_rows(mask, shape):
    """The mask as ``[B·H·Q, K]`` rows (a broadcast view, no copy until a part is read)."""
    return mask.expand(shape).reshape(-1, shape[-1]) if mask is not None else None


def _forward_torch(scores, mask, scale, seed, p, out_dtype):
    shape, n_cols = scores.shape, scores.shape[-1]
    rows_all = scores.reshape(-1, n_cols)
    mask_rows = _broadcast_rows(mask, shape)
    probs = torch.empty(rows_all.shape, dtype=out_dtype, device=scores.device)
    out = torch.empty_like(probs) if p > 0 else probs
    step = max(1, PART // n_cols)
    for start in range(0, rows_all.shape[0], step):
        part = slice(start, start + step)
        s = rows_all[part].float() * scale
        if mask_rows is not None:
            s = s + mask_rows[part].float()
        s64 = s.double()
        e = torch.exp(s64 - s.max(1, keepdim=True).values.double())
        probs[part] = (e / e.sum(1, keepdim=True)).float()
        if p > 0:
            keep = _keep(seed, s.shape[0], n_cols, start, p, scores.device)
            y = probs[part].float()
            out[part] = torch.where(keep, y * (1.0 / (1.0 - p)), torch.zeros((), device=scores.device))
    return probs.view(shape), out.view(shape)


def _backward_torch(grad, probs, scale, seed, p, grad_dtype):
    shape, n_cols = probs.shape, probs.shape[-1]
    g_rows, y_rows = grad.reshape(-1, n_cols), probs.reshape(-1, n_cols)
    ds = torch.empty(y_rows.shape, dtype=grad_dtype, device=probs.device)
    step = max(1, PART // n_cols)
    scale64 = float(torch.tensor(scale, dtype=torch.float32))
    for start in range(0, y_rows.shape[0], step):
        part = slice(start, start + step)
        dy = g_rows[part].float()
        if p > 0:
            keep = _keep(seed, dy.shape[0], n_cols, start, p, probs.device)
            dy = torch.where(keep, dy * (1.0 / (1.0 - p)), torch.zeros((), device=probs.device))
        y, dy64 = y_rows[part].float().double(), dy.double()
        dot = torch.einsum("ij,ij->i", dy64, y)
        ds[part] = (y * (dy64 - dot[:, None]) * scale64).float()
    return ds.view(shape)


class SoftmaxDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, mask, scale: float, p: float, seed: int, out_dtype):
        scores = scores.contiguous()
        backend = dispatch.triton_kernels().softmax_dropout_forward if dispatch.kernel_backend(scores) == "triton" \
            else _forward_torch
        probs, out = fused_op("softmax_dropout", "normalization",
                              lambda: backend(scores, mask, scale, seed, p, out_dtype), scores, mask)
        ctx.save_for_backward(probs)
        ctx.scale, ctx.p, ctx.seed, ctx.grad_dtype = scale, p, seed, scores.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        (probs,) = ctx.saved_tensors
        grad = grad.contiguous()
        backend = dispatch.triton_kernels().softmax_dropout_backward if dispatch.kernel_backend(grad) == "triton" \
            else _backward_torch
        ds = fused_op("softmax_dropout_backward", "normalization",
                      lambda: backend(grad, probs, ctx.scale, ctx.seed, ctx.p, ctx.grad_dtype), grad, probs)
        return ds, None, None, None, None, None


def scaled_masked_softmax(scores: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None,
                          p: float = 0.0, seed: int = 0, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``dropout(softmax(scores · scale + mask), p)`` over the last dimension of 4-D ``scores``, by the contract
    above. ``mask`` is additive (bool masks: True keeps) and broadcastable to ``scores``; ``out_dtype`` is the
    probabilities' dtype (default: the scores')."""
    dispatch.check_float_tensor(scores)
    if scores.dim() != 4:
        raise ValueError(f"scores must be [batch, heads, queries, keys]; got {tuple(scores.shape)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p={p!r}: the dropout probability must be in [0, 1)")
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        if mask.dim() != 4 or any(m not in (1, s) for m, s in zip(mask.shape, scores.shape, strict=True)):
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to scores {tuple(scores.shape)}")
    return SoftmaxDropoutFunction.apply(scores, mask, float(scale), float(p), int(seed) % SEED_LIMIT,
                                        out_dtype or scores.dtype)
