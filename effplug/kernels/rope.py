"""Rotary position embedding (Su et al., RoFormer, eq. 34, in the rotate-half layout of GPT-NeoX and HF's
Llama family) forward and backward, applied to q and k in place. Liger-Kernel's shape: a Triton kernel, a torch
reference with the same contract, an ``autograd.Function`` and a module.

Contract, for each row of ``D`` elements split into halves ``x = (x₁, x₂)`` and ``cos = (c₁, c₂)``,
``sin = (s₁, s₂)``, in fp32 and rounded once to nearest in the dtype::

    forward:   y₁ = x₁c₁ − x₂s₁,   y₂ = x₂c₂ + x₁s₂          (HF's q·cos + rotate_half(q)·sin)
    backward:  dx₁ = g₁c₁ + g₂s₂,  dx₂ = g₂c₂ − g₁s₁         (the rotation's transpose)

In fp32 this is HF's formula bit for bit; in bf16/fp16 it rounds once where HF rounds after each op. Autograd
keeps only ``cos`` and ``sin`` (shared by every layer), where the unfused form keeps ``q``, ``rotate_half(q)``,
``k`` and ``rotate_half(k)`` per layer. The forward writes into q and k (``inplace=True``, as the HF patch
calls it) or into new tensors; the backward writes a new gradient, since autograd's incoming one may be shared.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def _rotate_torch(x, out, cos, sin, backward):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c1, c2 = cos[..., :half].float(), cos[..., half:].float()
    s1, s2 = sin[..., :half].float(), sin[..., half:].float()
    if backward:
        y1, y2 = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    else:
        y1, y2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    out[..., :half] = y1
    out[..., half:] = y2
    return out


def _rotate(x, out, cos, sin, backward: bool):
    """``out`` = the rotation of ``x`` (``out`` may be ``x``); cos/sin (B, 1, S, D) broadcast over heads."""
    c, s = cos.expand(x.shape), sin.expand(x.shape)
    if dispatch.kernel_backend(x) == "triton":
        def run():
            return dispatch.triton_kernels().rope(x, out, c, s, backward)
    else:
        def run():
            return _rotate_torch(x, out, c, s, backward)
    return fused_op("rope_backward" if backward else "rope", "elementwise", run, x, cos, sin)


def _writable(x) -> bool:
    """Whether autograd allows writing into ``x``: not a leaf that requires grad, nor a view of one, nor a view
    that autograd marks as made inside a custom Function or returned as-is by one (module backward hooks do
    that). The mark is read through torch's private ``_get_creation_meta``; without it, nothing is written
    in place."""
    root = x if x._base is None else x._base
    if x.stride(-1) != 1 or (root.is_leaf and root.requires_grad):
        return False
    if x._base is None or not x.requires_grad:
        return True
    try:
        meta = torch._C._autograd._get_creation_meta(x)
    except (AttributeError, RuntimeError):
        return False
    return meta == torch._C._autograd.CreationMeta.DEFAULT


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class RotaryEmbeddingFunction(torch.autograd.Function):
    """One tensor per call: autograd cannot return several outputs when an input view is modified in place."""

    @staticmethod
    def forward(ctx, x, cos, sin, inplace: bool):
        if inplace and _writable(x):
            out = _rotate(x, x, cos, sin, backward=False)
            ctx.mark_dirty(x)
        else:
            out = _rotate(_unit_last_stride(x), torch.empty_like(x, memory_format=torch.contiguous_format), cos,
                          sin, backward=False)
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        grad = _unit_last_stride(grad)
        dx = _rotate(grad, torch.empty_like(grad, memory_format=torch.contiguous_format), cos, sin, backward=True)
        return dx, None, None, None


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1,
                     inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q·cos + rotate_half(q)·sin, k·cos + rotate_half(k)·sin)`` by the contract above, with HF's argument
    convention: q and k are (B, H, S, D) for ``unsqueeze_dim=1``, cos and sin (B, S, D). With ``inplace`` the
    results are written into q and k (unless autograd forbids it: a leaf, or a view of one) and returned."""
    for name, t in (("q", q), ("k", k)):
        dispatch.check_float_tensor(t)
        if t.dim() != 4 or t.shape[-1] % 2:
            raise ValueError(f"{name} must be 4-D with an even last dimension; got {tuple(t.shape)}")
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"unsqueeze_dim must be 1 (q is B, H, S, D) or 2 (B, S, H, D); got {unsqueeze_dim}")
    if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[-1] != q.shape[-1]:
        raise ValueError(f"cos and sin must both be (B, S, {q.shape[-1]}); got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    if unsqueeze_dim == 2:  # the kernel walks (B, H, S, D): transposed views, no copies
        q_out, k_out = rotary_embedding(q.transpose(1, 2), k.transpose(1, 2), cos, sin, 1, inplace)
        return q_out.transpose(1, 2), k_out.transpose(1, 2)
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("rotary_embedding treats cos and sin as constants (HF computes them under no_grad); "
                         "detach them, or use the unfused formula to learn them")
    cos, sin = (_unit_last_stride(t).unsqueeze(1) for t in (cos, sin))
    return (RotaryEmbeddingFunction.apply(q, cos, sin, inplace), RotaryEmbeddingFunction.apply(k, cos, sin, inplace))


class FusedRotaryEmbedding(nn.Module):
    """``nn.Module`` form: ``FusedRotaryEmbedding(inplace=False)(q, k, cos, sin)``."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, q, k, cos, sin, unsqueeze_dim: int = 1):
        return rotary_embedding(q, k, cos, sin, unsqueeze_dim, self.inplace)
