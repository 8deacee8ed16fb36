"""Sampled dense × denseᵀ on low-precision integers, after Magicube's SDDMM (Li, Osawa, Hoefler, SC'22, Sec. 5).

Contract, for a vector-sparse ``pattern`` (only its structure is read) and dense float ``A`` ``[M, K]``,
``B`` ``[N, K]``, both quantized to int8 with one scale per row (``s = max|row| / 127``, round half to even):

    out[j, v] = fp32(Σ_k q_A[r, k] · q_B[c, k]) · s_A[r] · s_B[c]     r = row of element v of vector j, c = its column

and 0 where the pattern's ``element_mask`` is false. The integer sum is exact in both the Triton kernel (int32
accumulator over ``tl.dot``) and the torch reference (an int64 product), so they agree bit for bit.
"""

from __future__ import annotations

import torch

from effplug.kernels import dispatch
from effplug.kernels.spmm import quantize_dense
from effplug.sparse.format import VectorSparseMatrix


def _sddmm_torch(pattern, qa, a_scale, qb, b_scale) -> torch.Tensor:
    rows = pattern.element_rows()
    cols = pattern.col_idx.long()[:, None].expand_as(rows)
    total = (qa.long() @ qb.long().T)[rows, cols]
    return total.float() * a_scale[rows] * b_scale[cols]


def sddmm(pattern: VectorSparseMatrix, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(A @ Bᵀ)`` sampled at ``pattern``: fp32 values ``[nnz, V]`` in the pattern's layout (see the contract)."""
    rows, cols = pattern.shape
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rows or b.shape[0] != cols or a.shape[1] != b.shape[1]:
        raise ValueError(f"sddmm: A must be [{rows}, K] and B [{cols}, K] for a pattern of shape {pattern.shape}; "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    qa, a_scale = quantize_dense(a, 8, dim=1)
    qb, b_scale = quantize_dense(b, 8, dim=1)
    pad = pattern.padded_rows - rows
    if pad:
        qa = torch.cat([qa, qa.new_zeros(pad, qa.shape[1])])
        a_scale = torch.cat([a_scale, a_scale.new_ones(pad)])
    if dispatch.kernel_backend(a) == "triton":
        out = dispatch.triton_kernels().sddmm(pattern, qa, a_scale, qb, b_scale)
    else:
        out = _sddmm_torch(pattern, qa, a_scale, qb, b_scale)
    return torch.where(pattern.element_mask, out, torch.zeros((), device=out.device))
