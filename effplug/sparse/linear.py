"""``SparseLinear``: a linear layer whose weight is stored vector-sparse and multiplied on integers
(:func:`effplug.kernels.spmm.spmm`), trained with its mask fixed.

Forward: ``y = x Wᵀ + b`` computed as ``(W xᵀ)ᵀ`` by the SpMM, with ``W`` quantized per output row to
``bits`` and ``x`` per token to ``dense_bits``. Backward is the straight-through estimator of both
quantizers: ``∂L/∂x = ∂L/∂y · Ŵ`` (``Ŵ`` the dequantized weight) and ``∂L/∂W = (∂L/∂y)ᵀ x`` taken only at the
mask, so the weight's gradient, its optimizer state and the weight itself have ``nnz`` entries, never
``out × in``. The float master values are the parameter; the integers are made from them at each call.
"""

from __future__ import annotations

import torch
from torch import nn

from effplug.kernels.spmm import spmm
from effplug.sparse.format import VectorSparseMatrix, check_value_bits


class _SparseLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, values, structure: VectorSparseMatrix, dense_bits: int):
        weight = structure.with_values(values)
        ctx.save_for_backward(x2d)
        ctx.weight = weight
        return spmm(weight, x2d.T, dense_bits).T

    @staticmethod
    def backward(ctx, grad_out):
        (x2d,) = ctx.saved_tensors
        weight = ctx.weight
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.to_dense(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            rows = weight.element_rows()
            cols = weight.col_idx.long()[:, None].expand_as(rows)
            grad_dense = grad_out.float().T @ x2d.float()  # [out, in]: transient, like a dense layer's
            grad_dense = torch.cat([grad_dense, grad_dense.new_zeros(weight.padded_rows - weight.shape[0],
                                                                     grad_dense.shape[1])])
            grad_values = torch.where(weight.element_mask, grad_dense[rows, cols], torch.zeros((), device=rows.device))
        return grad_x, grad_values, None, None


class SparseLinear(nn.Module):
    """``nn.Linear`` with a fixed vector-sparse mask and integer weights: ``SparseLinear.from_linear(linear,
    mask, vector=4, bits=8)``. State: ``values`` (the float master weights at the mask), ``bias``, and the
    structure buffers ``row_ptr``, ``col_idx``, ``element_mask``, all plain tensors."""

    def __init__(self, in_features: int, out_features: int, structure: VectorSparseMatrix, bias: bool = True,
                 dense_bits: int = 8):
        super().__init__()
        if structure.shape != (out_features, in_features):
            raise ValueError(f"the structure has shape {structure.shape}; a SparseLinear({in_features}, "
                             f"{out_features}) needs ({out_features}, {in_features})")
        self.in_features, self.out_features = in_features, out_features
        self.vector, self.bits, self.dense_bits = structure.vector, structure.bits, dense_bits
        self.values = nn.Parameter(structure.float_values())
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("row_ptr", structure.row_ptr.clone())
        self.register_buffer("col_idx", structure.col_idx.clone())
        self.register_buffer("element_mask", structure.element_mask.clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, vector: int = 4, bits: int = 8,
                    dense_bits: int = 8) -> SparseLinear:
        """Keep ``linear.weight`` where ``mask`` (default: its nonzeros) is true. The master values are the
        float weights themselves, not their quantized copy."""
        check_value_bits(bits)
        weight = linear.weight.detach()
        structure = VectorSparseMatrix.from_dense(weight, mask, vector, bits)
        module = cls(linear.in_features, linear.out_features, structure, bias=linear.bias is not None,
                     dense_bits=dense_bits).to(weight.device)
        rows = structure.element_rows()
        padded = torch.cat([weight.float(), weight.new_zeros(structure.padded_rows - weight.shape[0], weight.shape[1])
                            .float()])
        exact = padded[rows, structure.col_idx.long()[:, None].expand_as(rows)]
        module.values.data.copy_(torch.where(structure.element_mask, exact, torch.zeros((), device=exact.device)))
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def structure(self) -> VectorSparseMatrix:
        empty = torch.empty(0, dtype=torch.int8, device=self.values.device)
        return VectorSparseMatrix((self.out_features, self.in_features), self.vector, self.bits, self.row_ptr,
                                  self.col_idx, empty, torch.empty(0, device=self.values.device), self.element_mask)

    def sparse_weight(self) -> VectorSparseMatrix:
        """The integer weight this layer multiplies with."""
        return self.structure().with_values(self.values)

    def weight_nbytes(self) -> int:
        """Bytes of the stored integer weight (indices, values, scales), against ``4 · out · in`` dense fp32."""
        return self.sparse_weight().nbytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features)
        y = _SparseLinearFunction.apply(x2d, self.values, self.structure(), self.dense_bits)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        density = self.element_mask.sum().item() / max(1, self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, vector={self.vector}, "
                f"bits={self.bits}, dense_bits={self.dense_bits}, density={density:.3f}")
