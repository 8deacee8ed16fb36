"""Fused bias + dropout + residual add, LightSeq2-style (Wang et al., SC'22, Sec. 3.1): one pass over the
tensor, and a dropout mask that is never stored. Backward regenerates it from the seed.

Contract, computed in fp32 whatever the dtype, for element ``e`` of the row-major flattened ``x``::

    u_e  = (philox_word(seed, e) >> 8) · 2^-24            (effplug.kernels.philox: the Triton stream)
    keep = u_e >= p
    out  = residual + (keep ? (x + bias[e % hidden]) · 1/(1 − p) : 0)      rounded to nearest in x.dtype
    dx   = keep ? dout · 1/(1 − p) : 0,    dbias = Σ_rows dx,    dresidual = dout

The torch reference and the Triton kernel draw the same bits, so they agree bit for bit, bf16 included (the
kernel rounds bf16 through its bit pattern, which the interpreter and a GPU share). What autograd keeps
for backward is the seed and ``p``, not the mask or any activation: the unfused ``dropout(x + b) + r`` keeps
a mask of one byte per element.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.philox import SEED_LIMIT, random_words, resolve_seed
from effplug.kernels.regions import fused_op


def keep_mask(seed: int, n: int, p: float, device) -> torch.Tensor:
    """Which of ``n`` elements the contract keeps (the torch reference's mask)."""
    words = random_words(seed, n, device)
    return (words >> 8).to(torch.float32) * (1.0 / 16777216.0) >= p


def _check(x, bias, residual, p) -> None:
    dispatch.check_float_tensor(x)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual must match x: got {tuple(residual.shape)} {residual.dtype} for x "
                         f"{tuple(x.shape)} {x.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.numel() != x.shape[-1]):
        raise ValueError(f"bias must be 1-D over x's last dimension ({x.shape[-1]}); got {tuple(bias.shape)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p={p!r}: the dropout probability must be in [0, 1)")


def _forward_torch(x, bias, residual, seed, p, scale):
    y = x.float() if bias is None else x.float() + bias.float()
    keep = keep_mask(seed, x.numel(), p, x.device).view(x.shape)
    return (residual.float() + torch.where(keep, y * scale, torch.zeros((), device=x.device))).to(x.dtype)


def _backward_torch(grad, seed, p, scale):
    keep = keep_mask(seed, grad.numel(), p, grad.device).view(grad.shape)
    return torch.where(keep, grad.float() * scale, torch.zeros((), device=grad.device)).to(grad.dtype)


class BiasDropoutResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, p: float, seed: int):
        scale = 1.0 / (1.0 - p)
        x, residual = x.contiguous(), residual.contiguous()
        if dispatch.kernel_backend(x) == "triton":
            def run():
                return dispatch.triton_kernels().bias_dropout_residual(x, bias, residual, seed, p, scale)
        else:
            def run():
                return _forward_torch(x, bias, residual, seed, p, scale)
        out = fused_op("bias_dropout_residual", "elementwise", run, x, bias, residual)
        ctx.seed, ctx.p, ctx.scale, ctx.has_bias = seed, p, scale, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dispatch.kernel_backend(grad) == "triton":
            def run():
                return dispatch.triton_kernels().dropout_backward(grad, ctx.seed, ctx.p, ctx.scale)
        else:
            def run():
                return _backward_torch(grad, ctx.seed, ctx.p, ctx.scale)
        dx = fused_op("dropout_backward", "elementwise", run, grad)
        dbias = dx.reshape(-1, dx.shape[-1]).sum(0) if ctx.has_bias else None
        return dx, dbias, grad, None, None


def bias_dropout_residual(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, p: float,
                          seed: int) -> torch.Tensor:
    """``residual + dropout(x + bias)`` by the contract above (autograd-aware)."""
    _check(x, bias, residual, p)
    return BiasDropoutResidual.apply(x, bias, residual, float(p), int(seed) % SEED_LIMIT)


class DropoutSeeds(nn.Module):
    """The seed stream of a mask-free dropout: call ``i`` in training uses ``seed + i``.

    ``seed`` comes from the argument or the framework's seed (``effplug.kernels.philox.resolve_seed``). ``seed``
    and ``calls`` are buffers, so a checkpoint resumes the same masks; Python mirrors spare a host read of a
    CUDA buffer on every call.
    """

    def __init__(self, seed: int | None = None):
        super().__init__()
        self._seed, self._calls = resolve_seed(seed), 0
        self.register_buffer("seed", torch.tensor(self._seed, dtype=torch.int64))
        self.register_buffer("calls", torch.tensor(0, dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._seed, self._calls = int(self.seed), int(self.calls)  # once, at load time

    def next_seed(self) -> int:
        seed = (self._seed + self._calls) % SEED_LIMIT
        self._calls += 1
        self.calls.add_(1)  # device-side, no sync: the checkpoint carries it
        return seed


class FusedBiasDropoutResidual(DropoutSeeds):
    """``residual + dropout(x + bias)`` with a fresh mask each training call and none stored (seeds as in
    ``DropoutSeeds``). In eval mode, or with ``p == 0``, it is ``residual + x + bias``."""

    def __init__(self, p: float = 0.1, seed: int | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p={p!r}: the dropout probability must be in [0, 1)")
        super().__init__(seed)
        self.p = p

    def forward(self, x, bias, residual):
        if not self.training or self.p == 0:
            return residual + (x if bias is None else x + bias)
        return bias_dropout_residual(x, bias, residual, self.p, self.next_seed())

    def extra_repr(self) -> str:
        return f"p={self.p}"
