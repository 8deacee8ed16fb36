"""SwiGLU (Shazeer, 2020, eq. 6 with Swish_1 = SiLU): ``silu(a) · b`` as one pass forward and one backward,
where ``a = x W_gate`` and ``b = x W_up``. Liger-Kernel's shape: Triton kernels, a torch reference with the
same contract, an ``autograd.Function`` and a module.

Contract, per element, computed in float64 and rounded once to fp32, then to nearest in the dtype::

    s   = 1 / (1 + exp(−a))
    out = a · s · b
    da  = g · b · s · (1 + a(1 − s)),     db = g · a · s

Why float64: ``exp`` is not correctly rounded in fp32 on either side (torch's vectorized CPU math, the
interpreter's numpy, a GPU's ``ex2.approx``). In float64 their differences sit ~2^-29 below an fp32 ulp, so
the rounded results agree bit for bit except in that vanishing case. Autograd keeps ``a`` and ``b``, as the
unfused ``act_fn(a) * b`` does, but not the activation's output (the unfused form keeps ``silu(a)`` too).
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op

PART = 1 << 16  # elements per float64 part: the torch path stays in cache instead of making 8-byte copies


def _forward_torch(a, b):
    out = torch.empty_like(a)
    flat_a, flat_b, flat_out = a.reshape(-1), b.reshape(-1), out.view(-1)
    for start in range(0, flat_a.numel(), PART):
        a64, b64 = flat_a[start:start + PART].double(), flat_b[start:start + PART].double()
        s = torch.exp(-a64).add_(1.0).reciprocal_()
        flat_out[start:start + PART] = a64.mul_(s).mul_(b64).float()
    return out


def _backward_torch(grad, a, b):
    da, db = torch.empty_like(a), torch.empty_like(b)
    flat = [t.reshape(-1) for t in (grad, a, b, da, db)]
    for start in range(0, flat[1].numel(), PART):
        g64, a64, b64 = (t[start:start + PART].double() for t in flat[:3])
        s = torch.exp(-a64).add_(1.0).reciprocal_()
        flat[4][start:start + PART] = (g64 * a64).mul_(s).float()
        gate = torch.sub(1.0, s).mul_(a64).add_(1.0)  # 1 + a(1 − s)
        flat[3][start:start + PART] = g64.mul_(b64).mul_(s).mul_(gate).float()
    return da, db


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        backend = dispatch.triton_kernels().swiglu_forward if dispatch.kernel_backend(a) == "triton" \
            else _forward_torch
        out = fused_op("swiglu", "elementwise", lambda: backend(a, b), a, b)
        ctx.save_for_backward(a, b)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        backend = dispatch.triton_kernels().swiglu_backward if dispatch.kernel_backend(grad) == "triton" \
            else _backward_torch
        return fused_op("swiglu_backward", "elementwise", lambda: backend(grad, a, b), grad, a, b)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``silu(a) · b`` by the contract above (autograd-aware)."""
    dispatch.check_float_tensor(a)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"swiglu needs a and b of one shape and dtype; got {tuple(a.shape)} {a.dtype} and "
                         f"{tuple(b.shape)} {b.dtype}")
    return SwiGLUFunction.apply(a, b)


class FusedSwiGLUMLP(nn.Module):
    """The gated MLP of Llama, Qwen2/3 and Mistral: ``down(swiglu(gate(x), up(x)))``."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
