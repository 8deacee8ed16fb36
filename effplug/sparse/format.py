"""The vector-sparse format of Magicube (Li, Osawa, Hoefler, SC'22, Sec. 3, "1-D column-vector sparsity"):
a CSR over *vector rows*. Rows ``[i·V, i·V + V)`` form vector row ``i``; each nonzero is a V×1 column vector
at one column, its V values stored together (``values[j, v]`` is row ``i·V + v`` of nonzero ``j``).

Values are symmetric integers with one fp32 scale per row (``w ≈ scale[r] · q``):

- ``bits=8``: int8 in [-127, 127], one per byte;
- ``bits=4``: int4 in [-7, 7], stored as the unsigned code ``q + 8`` two per byte in the core's packing order
  (value ``j`` of the flattened ``[nnz, V]`` block in byte ``j // 2`` at bit offset ``(j % 2) · 4``).

Elements of a stored vector that the mask leaves out are stored as zero and flagged in ``element_mask`` (a
sparse-attention mask needs them to stay out of the softmax; a weight is simply zero there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VECTOR_LENGTHS = (2, 4, 8)
VALUE_BITS = (4, 8)


def check_vector(vector: int) -> None:
    if vector not in VECTOR_LENGTHS:
        raise ValueError(f"vector={vector!r} is not supported; use one of {', '.join(map(str, VECTOR_LENGTHS))} "
                         "(Magicube's V×1 column vectors)")


def check_value_bits(bits: int) -> None:
    if bits not in VALUE_BITS:
        raise ValueError(f"bits={bits!r} is not supported for sparse values; use 4 or 8")


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def symmetric_scales(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """absmax / qmax along ``dim`` in fp32; a zero (or all-masked) slice gets scale 1 so it decodes to zeros."""
    amax = x.detach().float().abs().amax(dim=dim)
    return torch.where(amax > 0, amax / qmax(bits), torch.ones((), device=x.device))


def quantize_symmetric(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest-even ``x / scale`` clamped to ±qmax, as int (``scale`` broadcasts against ``x``)."""
    limit = qmax(bits)
    return torch.round(x.float() / scale).clamp_(-limit, limit).to(torch.int16 if bits > 8 else torch.int8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], an even count, to bytes of two unsigned codes ``q + 8`` (low nibble first)."""
    codes = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    return codes[0::2] | (codes[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    low = (packed & 15).to(torch.int16) - 8
    high = (packed >> 4).to(torch.int16) - 8
    return torch.stack((low, high), dim=-1).reshape(-1)[:count].to(torch.int8)


@dataclass
class VectorSparseMatrix:
    """A ``shape = (rows, cols)`` matrix in Magicube's vector-sparse format; see the module docstring."""

    shape: tuple
    vector: int
    bits: int
    row_ptr: torch.Tensor  # int32 [rows_padded / V + 1]
    col_idx: torch.Tensor  # int32 [nnz]
    values: torch.Tensor  # int8 [nnz, V] (bits 8) or uint8 [nnz · V / 2] (bits 4)
    scales: torch.Tensor  # fp32 [rows_padded], one per row
    element_mask: torch.Tensor  # bool [nnz, V]

    @property
    def nnz_vectors(self) -> int:
        return int(self.col_idx.numel())

    @property
    def vector_rows(self) -> int:
        return int(self.row_ptr.numel()) - 1

    @property
    def padded_rows(self) -> int:
        return self.vector_rows * self.vector

    @property
    def density(self) -> float:
        return self.nnz_vectors * self.vector / max(1, self.shape[0] * self.shape[1])

    def nbytes(self) -> int:
        """Bytes of the stored matrix: indices, values and scales (the element mask is not needed for weights)."""
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.col_idx, self.values, self.scales))

    def int_values(self) -> torch.Tensor:
        """The integer values as int8 ``[nnz, V]`` (int4 unpacked)."""
        if self.bits == 8:
            return self.values
        return unpack_int4(self.values, self.nnz_vectors * self.vector).view(self.nnz_vectors, self.vector)

    def vector_row_of_each(self) -> torch.Tensor:
        """For each stored vector, its vector row (int64 ``[nnz]``)."""
        lengths = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.vector_rows, device=lengths.device), lengths)

    def element_rows(self) -> torch.Tensor:
        """Matrix row of each stored element (int64 ``[nnz, V]``)."""
        base = self.vector_row_of_each() * self.vector
        return base[:, None] + torch.arange(self.vector, device=base.device)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        """Dequantized dense matrix (``scale[r] · q``), rows cropped to ``shape``."""
        rows, cols = self.shape
        out = torch.zeros(self.padded_rows, cols, dtype=torch.float32, device=self.values.device)
        if self.nnz_vectors:
            r = self.element_rows()
            c = self.col_idx.long()[:, None].expand_as(r)
            out[r, c] = self.int_values().float() * self.scales[r]
        return out[:rows].to(dtype)

    def dense_mask(self) -> torch.Tensor:
        rows, cols = self.shape
        out = torch.zeros(self.padded_rows, cols, dtype=torch.bool, device=self.values.device)
        if self.nnz_vectors:
            r = self.element_rows()
            out[r, self.col_idx.long()[:, None].expand_as(r)] = self.element_mask
        return out[:rows]

    def with_values(self, values: torch.Tensor, bits: int | None = None) -> VectorSparseMatrix:
        """The same structure holding float ``values`` ``[nnz, V]``, quantized with fresh per-row scales."""
        bits = self.bits if bits is None else bits
        check_value_bits(bits)
        if values.shape != (self.nnz_vectors, self.vector):
            raise ValueError(f"values must be [{self.nnz_vectors}, {self.vector}]; got {tuple(values.shape)}")
        values = torch.where(self.element_mask, values.detach().float(), torch.zeros((), device=values.device))
        rows = self.element_rows()
        amax = torch.zeros(self.padded_rows, device=values.device).scatter_reduce(
            0, rows.reshape(-1), values.abs().reshape(-1), reduce="amax")
        scales = torch.where(amax > 0, amax / qmax(bits), torch.ones((), device=values.device))
        q = quantize_symmetric(values, scales[rows], bits)
        stored = q if bits == 8 else pack_int4(q)
        return VectorSparseMatrix(self.shape, self.vector, bits, self.row_ptr, self.col_idx, stored, scales,
                                  self.element_mask)

    def float_values(self) -> torch.Tensor:
        """Dequantized values ``[nnz, V]`` in fp32."""
        return self.int_values().float() * self.scales[self.element_rows()]

    @classmethod
    def from_dense(cls, dense: torch.Tensor, mask: torch.Tensor | None = None, vector: int = 4,
                   bits: int = 8) -> VectorSparseMatrix:
        """Keep ``dense`` where ``mask`` (default ``dense != 0``) is true. A vector is stored where any of its V
        rows is kept; rows are padded with zeros to a multiple of V."""
        check_vector(vector)
        check_value_bits(bits)
        if dense.dim() != 2:
            raise ValueError(f"from_dense takes a 2-D matrix; got shape {tuple(dense.shape)}")
        if not torch.isfinite(dense).all():
            raise ValueError("from_dense got non-finite values; a sparse matrix cannot store inf or NaN")
        rows, cols = dense.shape
        mask = (dense != 0) if mask is None else mask.to(torch.bool)
        if mask.shape != dense.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; it must match the matrix {tuple(dense.shape)}")
        padded = -(-rows // vector) * vector
        d = torch.zeros(padded, cols, dtype=torch.float32, device=dense.device)
        m = torch.zeros(padded, cols, dtype=torch.bool, device=dense.device)
        d[:rows], m[:rows] = dense.detach().float(), mask
        d = torch.where(m, d, torch.zeros((), device=d.device))
        scales = symmetric_scales(d, bits, dim=1)
        mv = m.view(padded // vector, vector, cols)  # [vector rows, V, cols]
        vr, col = mv.any(dim=1).nonzero(as_tuple=True)  # row-major: sorted by vector row, then column
        values = d.view(padded // vector, vector, cols)[vr, :, col]  # [nnz, V]
        element_mask = mv[vr, :, col]
        rows_of = vr[:, None] * vector + torch.arange(vector, device=d.device)
        q = quantize_symmetric(values, scales[rows_of], bits)
        counts = torch.bincount(vr, minlength=padded // vector)
        row_ptr = torch.zeros(padded // vector + 1, dtype=torch.int32, device=d.device)
        row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        stored = q if bits == 8 else pack_int4(q)
        return cls((rows, cols), vector, bits, row_ptr, col.to(torch.int32), stored, scales, element_mask)
