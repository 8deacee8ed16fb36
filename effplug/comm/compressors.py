"""Gradient compressors for data-parallel training (framework-free; the DDP hook adapter is ``ddp_hooks``).

Each compressor averages a flat gradient vector across the ranks of a process group in fewer bytes:

* ``TopKCompressor``: top-k sparsification with error feedback (Alistarh et al., NeurIPS 2018; Stich et
  al. 2018). Per rank: ``acc = g + e``; send ``(acc[S], S)`` for the k largest ``|acc|``; ``e = acc - sent``.
  Sparse vectors do not sum, so the exchange is an all-gather of values and indices.
* ``NaturalCompressor``: natural compression C_nat (Horvath et al. 2022, eq. 3), unbiased stochastic rounding
  to a power of two sent as 8-bit sign+exponent codes. Exchanged as a compressed reduce-scatter (all-to-all of
  codes, each rank averages its chunk) and a compressed all-gather: the paper's bidirectional scheme, where the
  aggregated chunk is compressed again by its owner, so the bytes stay ~4x below dense at any world size.
* ``CGXCompressor``: CGX (Markov et al. 2022) bucketed max-min quantization, b-bit stochastic rounding with one
  scale and zero per bucket of 1024, exchanged as a quantized reduce-scatter then all-gather. Tensors that are
  1-D or smaller than ``min_compress_size`` are all-reduced exactly (CGX's layer filter).
* ``PowerSGDCompressor``: torch's PowerSGD hook (Vogels et al. 2019), the production baseline, with its state
  checkpointed.

Anything a compressor leaves uncompressed goes through a plain all-reduce, exactly as DDP would, and is
reported once. Per-rank state (residuals, seed positions) is ``state_dict()``: plain dicts of tensors and ints.
"""

from __future__ import annotations

# One file per compressor now; this module keeps the names it always exported.
from effplug.comm.base import GradientCompressor, Segment, _dense_future, _scatter_back  # noqa: F401
from effplug.comm.cgx import CGXCompressor  # noqa: F401
from effplug.comm.collectives import MeteredCollectives as _Collectives  # noqa: F401
from effplug.comm.natural import NaturalCompressor  # noqa: F401
from effplug.comm.powersgd import PowerSGDCompressor  # noqa: F401
from effplug.comm.reduce_scatter import ReduceScatterAllGather as _ReduceScatterAllGather  # noqa: F401
from effplug.comm.registry import COMPRESSORS, _compressor_class, compressor_options, make_compressor  # noqa: F401
from effplug.comm.topk import TopKCompressor  # noqa: F401
