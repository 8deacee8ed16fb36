"""CGX (Markov et al. 2022): bucketed max-min quantization through ``UniformCodec``."""

from __future__ import annotations

import torch

from effplug.codecs import UniformCodec
from effplug.comm.reduce_scatter import ReduceScatterAllGather
from effplug.kernels import pack as _pack


class CGXCompressor(ReduceScatterAllGather):
    """CGX: ``bits``-bit stochastic max-min quantization per bucket of ``bucket_size`` values.

    Per bucket: ``zero = min``, ``scale = (max - min) / (2**bits - 1)`` (bf16, so gradients never underflow
    the scale), ``q = floor((x - zero) / scale + u)``; an unbiased estimate of ``x``. Tensors that are 1-D or
    below ``min_compress_size`` elements stay exact (CGX's layer filter). Buckets never straddle two
    parameters: each parameter is padded to whole buckets.
    """

    name = "cgx"

    def __init__(self, bits: int = 4, bucket_size: int = 1024, seed: int | None = None,
                 min_compress_size: int = 1024, compress_1d: bool = False):
        if bits not in _pack.ALLOWED_BITS:
            raise ValueError(f"bits={bits!r} is not supported by cgx: use 1, 2, 4 or 8 (codes are bit-packed "
                             "into bytes); 4 is CGX's default")
        super().__init__(seed, min_compress_size, compress_1d)
        # bf16 scales, so gradients never underflow the scale
        self.codec = UniformCodec(bits, bucket_size, stochastic=True, seed=seed, scale_dtype=torch.bfloat16,
                                  group_name="bucket_size")
        self.bits, self.bucket_size = bits, bucket_size
        self.chunk_multiple = bucket_size

    def _encode_many(self, vectors, parts, keys):
        return [[self.codec.to_bytes(p) for p in self.codec.split(self.codec.encode(v, k), parts)]
                for v, k in zip(vectors, keys, strict=True)]

    def _decode_part(self, payload, numel, dtype):
        return self.codec.decode(self.codec.from_bytes(payload, [numel], dtype))

    def _part_nbytes(self, numel):
        return self.codec.nbytes_for(numel)
