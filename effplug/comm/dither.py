"""Natural dithering (Horváth et al. 2022, Sec. 4, D_nat^{p,s}) through ``DitherCodec``."""

from __future__ import annotations

from effplug.codecs import DitherCodec
from effplug.comm.reduce_scatter import ReduceScatterAllGather


class NaturalDitheringCompressor(ReduceScatterAllGather):
    """Natural dithering: per bucket, ``|x| / max|x|`` rounded at random to ``{0, 2**(1-levels), ..., 1/2, 1}``.

    Unbiased. ``levels=7`` sends 4 bits per value plus one fp32 scale per ``bucket_size`` values, half of
    natural compression's byte. Tensors that are 1-D or below ``min_compress_size`` elements stay exact.
    """

    name = "dither"

    def __init__(self, levels: int = 7, bucket_size: int = 512, seed: int | None = None,
                 min_compress_size: int = 1024, compress_1d: bool = False):
        super().__init__(seed, min_compress_size, compress_1d)
        self.codec = DitherCodec(levels, bucket_size, seed)
        self.levels, self.bucket_size = levels, bucket_size
        self.chunk_multiple = bucket_size

    def _encode_many(self, vectors, parts, keys):
        return [self.codec.to_bytes(self.codec.encode(v, k), parts) for v, k in zip(vectors, keys, strict=True)]

    def _decode_part(self, payload, numel, dtype):
        return self.codec.decode(self.codec.from_bytes(payload, numel, dtype))

    def _part_nbytes(self, numel):
        return self.codec.nbytes_for(numel)
