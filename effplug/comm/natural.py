"""Natural compression (Horváth et al. 2022, eq. 3) through ``Pow2Codec``."""

from __future__ import annotations

from effplug.codecs import Pow2Codec
from effplug.comm.reduce_scatter import ReduceScatterAllGather


class NaturalCompressor(ReduceScatterAllGather):
    """Natural compression: every element becomes ``±2**e`` (unbiased), sent as one byte plus a base exponent."""

    name = "natural"

    def __init__(self, seed: int | None = None, min_compress_size: int = 0, compress_1d: bool = True):
        super().__init__(seed, min_compress_size, compress_1d)
        self.codec = Pow2Codec(seed)

    def _encode_many(self, vectors, parts, keys):
        return [Pow2Codec.to_bytes(codes, parts) for codes in self.codec.encode_many(vectors, keys)]

    def _decode_part(self, payload, numel, dtype):
        return self.codec.decode(Pow2Codec.from_bytes(payload, numel, dtype))

    def _part_nbytes(self, numel):
        return Pow2Codec.wire_nbytes(numel)
