"""Sparse attention on integers, as Magicube's end-to-end sparse Transformer does it (SC'22, Sec. 6):
SDDMM for the scores at the mask, a softmax over each row's stored entries, then SpMM of the probabilities
(quantized to int8 per row) with ``v``.

``sparse_attention(q, k, v, mask)`` takes ``q, k, v`` ``[..., T, D]`` and a boolean ``mask`` ``[T, T]`` (True
attends), or a :class:`VectorSparseMatrix` built from one; a row with no entry gives zeros.
"""

from __future__ import annotations

import math

import torch

from effplug.kernels.sddmm import sddmm
from effplug.kernels.spmm import spmm
from effplug.sparse.format import VectorSparseMatrix


def attention_pattern(mask: torch.Tensor, vector: int = 4) -> VectorSparseMatrix:
    """A vector-sparse pattern of a boolean ``[T, T]`` attention mask."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"the attention mask must be a 2-D bool tensor; got {mask.dtype} {tuple(mask.shape)}")
    return VectorSparseMatrix.from_dense(mask.float(), mask, vector, bits=8)


def sparse_softmax(pattern: VectorSparseMatrix, scores: torch.Tensor) -> torch.Tensor:
    """Softmax over each row's stored entries (``element_mask`` false counts as absent): ``[nnz, V]``."""
    rows = pattern.element_rows().reshape(-1)
    masked = torch.where(pattern.element_mask, scores, torch.full((), -math.inf, device=scores.device)).reshape(-1)
    row_max = torch.full((pattern.padded_rows,), -math.inf, device=scores.device)
    row_max = row_max.scatter_reduce(0, rows, masked, reduce="amax")
    exp = torch.where(masked > -math.inf, torch.exp(masked - row_max[rows]), torch.zeros((), device=scores.device))
    total = torch.zeros(pattern.padded_rows, device=scores.device).index_add_(0, rows, exp)
    return (exp / total[rows].clamp_min(torch.finfo(torch.float32).tiny)).view_as(scores)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float | None = None,
                     vector: int = 4) -> torch.Tensor:
    """``softmax(q kᵀ · scale at mask) v`` with int8 SDDMM and SpMM; returns ``[..., T, D]`` in ``q``'s dtype."""
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q and k must share a shape and v its leading dims; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    pattern = mask if isinstance(mask, VectorSparseMatrix) else attention_pattern(mask, vector)
    length = q.shape[-2]
    if pattern.shape != (length, length):
        raise ValueError(f"the mask is {pattern.shape}; it must be [{length}, {length}] for sequences of {length}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lead = q.shape[:-2]
    qs, ks, vs = (t.reshape(-1, length, t.shape[-1]) for t in (q, k, v))
    outputs = []
    for qi, ki, vi in zip(qs, ks, vs, strict=True):
        probs = sparse_softmax(pattern, sddmm(pattern, qi, ki) * scale)
        outputs.append(spmm(pattern.with_values(probs, bits=8), vi))
    return torch.stack(outputs).reshape(*lead, length, v.shape[-1]).to(q.dtype)
