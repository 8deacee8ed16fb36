"""Cross-entropy fused with the final linear layer, in chunks of rows, so the full ``[N, V]`` logits never
exist (Liger-Kernel's FusedLinearCrossEntropy design; Wijmans et al., "Cut your losses", 2024, make the same
point). Each chunk's logits are made, turned into their gradient in place by one row kernel, multiplied back
into ``dh`` and ``dW``, and freed; backward only scales what forward computed.

Row contract for logits ``z`` (fp32) of vocabulary ``V``, target ``t``, label smoothing ``ε`` and z-loss
weight ``λ`` (PaLM, Chowdhery et al., 2022, Sec. 5), with the scalars in float64::

    S    = Σ exp(z − max z),   lse = max z + log S
    loss = lse − (1 − ε) z_t − (ε / V) Σ z + λ lse²                     (fp32 once; 0 for t = ignore_index)
    dz_i = (exp(z_i − max z) / S · (1 + 2λ lse) − ε/V − (1 − ε)[i = t]) · scale   (fp32 once; 0 if ignored)

``scale`` is 1 / (rows not ignored) for ``reduction="mean"`` and 1 for ``"sum"``. The loss with ``ε`` is
torch's ``cross_entropy(label_smoothing=ε)``: ``(1 − ε)·CE + ε·mean_i(lse − z_i)``. The Triton row kernel and
the torch reference agree bit for bit unless a float64 sum lands within ~2^-29 of an fp32 rounding boundary
(their summation orders differ). The matrix products run in the input dtype; ``dW`` accumulates in fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op

REDUCTIONS = ("mean", "sum")


def _fp32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))  # the kernel takes its scalars as fp32


def _cross_entropy_rows_torch(logits, target, ignore_index, smoothing, z_loss, grad_scale):
    """Per-row loss and fp32 lse; overwrites ``logits`` (fp32) with the gradient, like the kernel."""
    eps, lam, scale = _fp32(smoothing), _fp32(z_loss), _fp32(grad_scale)
    vocab = logits.shape[1]
    ignored = target == ignore_index
    safe_target = torch.where(ignored, torch.zeros_like(target), target)
    peak = logits.max(1).values.double()
    z = logits.double()
    exps = torch.exp(z.sub_(peak[:, None]))  # z − max, in place
    total = exps.sum(1)
    lse = peak + torch.log(total)
    uniform = eps / vocab
    z_target = logits.gather(1, safe_target[:, None]).squeeze(1).double()
    z_sum = logits.double().sum(1) if eps else torch.zeros_like(lse)  # (ε/V)·Σz vanishes without smoothing
    loss = lse - (1.0 - eps) * z_target - uniform * z_sum + lam * lse * lse
    loss = torch.where(ignored, torch.zeros((), dtype=torch.float32, device=logits.device), loss.float())
    grad = exps.div_(total[:, None]).mul_((1.0 + 2.0 * lam * lse)[:, None]).sub_(uniform)
    grad.scatter_add_(1, safe_target[:, None], torch.full_like(z_target[:, None], -(1.0 - eps)))
    row_scale = torch.where(ignored, torch.zeros((), dtype=torch.float64, device=logits.device), scale)
    logits.copy_((grad * row_scale[:, None]).float())
    return loss, lse.float()


def cross_entropy_rows(logits, target, ignore_index=-100, smoothing=0.0, z_loss=0.0, grad_scale=1.0):
    """The row contract above on fp32 ``logits [rows, V]``, through the dispatch; the logits become dz."""
    backend = dispatch.triton_kernels().cross_entropy_rows if dispatch.kernel_backend(logits) == "triton" \
        else _cross_entropy_rows_torch

    def run():  # the kernel writes the logits (as dz), the loss and lse
        return (*backend(logits, target, ignore_index, smoothing, z_loss, grad_scale), logits)

    loss, lse, _ = fused_op("cross_entropy_rows", "normalization", run, logits, target)
    return loss, lse


def default_chunk_rows(rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk: a sixteenth of the rows, but not under 256 (or all rows, if fewer).

    A sixteenth, because the torch reference's float64 temporaries are twice a chunk's fp32 logits, so the
    loss holds at most an eighth of the logits' bytes. Not under 256 rows, because every chunk reads the
    weight twice and updates dW once: smaller chunks trade a little memory for much more data movement.
    ``hidden`` and ``vocab`` are for callers that want another rule; this one does not need them.
    """
    return max(1, min(rows, max(256, -(-rows // 16))))


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, smoothing, z_loss, reduction, chunk_rows):
        rows = hidden.shape[0]
        valid = int((target != ignore_index).sum())
        scale = 1.0 / max(valid, 1) if reduction == "mean" else 1.0
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h = hidden[start:start + chunk_rows]
            logits = F.linear(h, weight, bias).float()
            loss, _ = cross_entropy_rows(logits, target[start:start + chunk_rows], ignore_index, smoothing,
                                         z_loss, scale)
            total += loss.double().sum()
            dz = logits.to(hidden.dtype)  # the logits buffer now holds dz
            if grad_hidden is not None:
                torch.mm(dz, weight, out=grad_hidden[start:start + chunk_rows])
            if grad_weight is not None:  # accumulated in place, in fp32, from the fp32 dz
                grad_weight.addmm_(logits.t(), h.float())
            if grad_bias is not None:
                grad_bias += logits.sum(0)
            del logits, dz
        # gradients, not activations: kept on ctx so activation-compression hooks never see them
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return (total * scale).float()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        dh = None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype)
        dw = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.dtypes[0])
        db = None if grad_bias is None else (grad_bias * grad_loss).to(ctx.dtypes[1])
        return dh, dw, db, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, reduction: str = "mean", chunk_rows: int | None = None) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target)`` (plus z-loss) without the full logits.

    ``hidden [N, H]`` (leading dimensions are flattened), ``weight [V, H]``, ``target [N]`` of class ids.
    """
    dispatch.check_float_tensor(hidden)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: the fused loss computes its gradient in forward, so it "
                         f"supports {', '.join(REDUCTIONS)}; use the unfused loss for per-row losses")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
    if z_loss < 0:
        raise ValueError(f"z_loss={z_loss!r} must be >= 0 (PaLM uses 1e-4)")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    target = target.reshape(-1)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be [vocab, {hidden.shape[1]}]; got {tuple(weight.shape)}")
    if target.shape[0] != hidden.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for {hidden.shape[0]} rows of hidden states")
    chunk = chunk_rows or default_chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    return LinearCrossEntropyFunction.apply(hidden, weight, bias, target.long(), int(ignore_index),
                                            float(label_smoothing), float(z_loss), reduction, int(chunk))


class FusedLinearCrossEntropy(nn.Module):
    """``FusedLinearCrossEntropy(ignore_index=-100, label_smoothing=0.0, z_loss=0.0)(hidden, lm_head, target)``."""

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 reduction: str = "mean"):
        super().__init__()
        self.ignore_index, self.label_smoothing, self.z_loss, self.reduction = (ignore_index, label_smoothing,
                                                                                z_loss, reduction)

    def forward(self, hidden, linear: nn.Linear, target):
        return linear_cross_entropy(hidden, linear.weight, target, linear.bias, self.ignore_index,
                                    self.label_smoothing, self.z_loss, self.reduction)
