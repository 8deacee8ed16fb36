"""Sparse × dense on low-precision integers, after Magicube's SpMM (Li, Osawa, Hoefler, SC'22, Sec. 4).

Contract, for ``A`` a :class:`~effplug.sparse.format.VectorSparseMatrix` (int8 or int4 values ``q_A``, row
scales ``s_A``) and a dense float ``B`` ``[K, N]``:

    s_B[n] = max_k |B[k, n]| / qmax,  q_B = round_half_even(B / s_B) clamped to ±qmax   (per column of B)
    C[m, n] = fp32(Σ_k q_A[m, k] · q_B[k, n]) · s_A[m] · s_B[n]                     (the sum exact, in integers)

``dense_bits=8`` keeps q_B in int8 (qmax 127), one int8 × int8 product per nonzero. ``dense_bits=16`` keeps it
in int16 (qmax 32767) and splits it as Magicube does for operands wider than the tensor cores' inputs:
``q_B = 256·hi + lo + 128`` with ``hi``, ``lo`` int8, so ``A·q_B = 256·(A·hi) + A·lo + 128·rowsum(A)``: two int8
products recombined by shifts and adds. The Triton kernel accumulates in int32 (exact for K ≲ 130k at 8 bits)
and recombines in int64; the torch reference multiplies a float64 CSR, which is exact for these integers
(K < 2^21). Both are exact, so they agree bit for bit.
The result is returned in ``B``'s dtype.
"""

from __future__ import annotations

import warnings

import torch

from effplug.kernels import dispatch
from effplug.sparse.format import VectorSparseMatrix, quantize_symmetric, symmetric_scales

DENSE_BITS = (8, 16)


def quantize_dense(b: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integers of ``b`` with one fp32 scale per slice along ``dim`` reduced (int8 or int16)."""
    if bits not in DENSE_BITS:
        raise ValueError(f"dense_bits={bits!r} is not supported; use 8 or 16")
    dispatch.check_float_tensor(b, "the dense operand")
    if not torch.isfinite(b).all():
        raise ValueError("the dense operand has non-finite values; an integer product cannot represent them")
    scale = symmetric_scales(b, bits, dim=dim)
    return quantize_symmetric(b, scale.unsqueeze(dim), bits), scale


def dense_int_matrix(a: VectorSparseMatrix) -> torch.Tensor:
    """The stored integers as a dense int64 ``[padded_rows, cols]`` (the references' exact operand)."""
    out = torch.zeros(a.padded_rows, a.shape[1], dtype=torch.int64, device=a.values.device)
    if a.nnz_vectors:
        rows = a.element_rows()
        out[rows, a.col_idx.long()[:, None].expand_as(rows)] = a.int_values().long()
    return out


def sparse_int_csr(a: VectorSparseMatrix) -> torch.Tensor:
    """The stored integers as a float64 CSR ``[padded_rows, cols]``, element by element (row-major); built
    once per matrix and kept on it."""
    cached = getattr(a, "_int_csr", None)
    if cached is not None:
        return cached
    a._int_csr = _build_int_csr(a)
    return a._int_csr


def _build_int_csr(a: VectorSparseMatrix) -> torch.Tensor:
    rows = a.element_rows().reshape(-1)
    cols = a.col_idx.long()[:, None].expand(-1, a.vector).reshape(-1)
    values = a.int_values().reshape(-1).double()
    order = torch.argsort(rows * a.shape[1] + cols)
    coo = torch.sparse_coo_tensor(torch.stack([rows[order], cols[order]]), values[order],
                                  (a.padded_rows, a.shape[1]), is_coalesced=True, check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def _spmm_torch(a: VectorSparseMatrix, qb: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    # float64 holds every partial sum of these integer products exactly (|sum| < 2^53 for K < 2^21 at
    # 16 bits), so any summation order gives the exact integer: the same as the kernel's int32/int64 sum.
    total = torch.sparse.mm(sparse_int_csr(a), qb.double()) if a.nnz_vectors else \
        torch.zeros(a.padded_rows, qb.shape[1], dtype=torch.float64, device=qb.device)
    return total.float() * a.scales[:, None] * b_scale[None, :]


def spmm(a: VectorSparseMatrix, b: torch.Tensor, dense_bits: int = 8) -> torch.Tensor:
    """``A @ B`` for vector-sparse ``A`` ``[M, K]`` and dense ``B`` ``[K, N]``, in ``B``'s dtype (see the contract)."""
    if b.dim() != 2 or b.shape[0] != a.shape[1]:
        raise ValueError(f"spmm: B must be [K={a.shape[1]}, N] for A of shape {a.shape}; got {tuple(b.shape)}")
    qb, b_scale = quantize_dense(b, dense_bits, dim=0)
    if dispatch.kernel_backend(b) == "triton":
        out = dispatch.triton_kernels().spmm(a, qb, b_scale)
    else:
        out = _spmm_torch(a, qb, b_scale)
    return out[: a.shape[0]].to(b.dtype)
