"""Sparse low-precision compute (Magicube's vector-sparse integers), pruning, and I/O-aware sparse inference.

- :class:`VectorSparseMatrix` (``format``): Magicube's V×1 column-vector CSR, int8/int4 values.
- :func:`effplug.kernels.spmm.spmm`, :func:`effplug.kernels.sddmm.sddmm`: the products (Triton + torch reference).
- :class:`SparseLinear` (``linear``) and :func:`sparse_attention` (``attention``).
- ``pruning``: magnitude pruning with schedules, masks as checkpointed state.
- ``io``: the I/O model of sparse FFN inference, its bounds, simulated annealing and a blocked executor.
"""

import importlib

# Loaded on first use: the kernels import ``effplug.sparse.format``, and these import the kernels.
_EXPORTS = {"SparseLinear": "linear", "VectorSparseMatrix": "format", "sparse_attention": "attention"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"effplug.sparse.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'effplug.sparse' has no attribute {name!r}")
