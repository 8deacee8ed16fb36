"""``DitherCodec``: natural dithering (Horváth et al. 2022, Sec. 4, D_nat^{p,s} with p = ∞ per bucket).

Per bucket of ``bucket_size`` values with scale ``m = max|x|`` (the bucket's ∞-norm), each ``y = |x| / m`` in
``[0, 1]`` is rounded at random to one of the two adjacent levels of ``{0, 2**(1-s), ..., 1/2, 1}`` so that
``E[level] = y``: above ``2**(1-s)`` that is natural compression's power-of-two rounding, below it the
stochastic underflow to 0 or ``2**(1-s)``. Both are the pow2 kernel's one primitive with ``lo_exp = 1 - s``,
so this codec adds no kernel of its own. A value is sent as a sign bit and its level index (0 means zero),
packed ``8 // code_bits`` per byte, plus one fp32 scale per bucket.

Variance (per bucket, derived in docs/natural-dithering.md): ``E‖D(x) − x‖² ≤ ‖x‖²/8 + 2**(1-s)·m·‖x‖₁``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.codecs.base import KeyedSeeds
from effplug.kernels import pack as _pack
from effplug.kernels import pow2 as _pow2
from effplug.kernels.pow2 import Pow2Codes

MAX_LEVELS = 127  # the pow2 codes' 7-bit level field


def code_bits(levels: int) -> int:
    """Bits per value: a sign plus ``ceil(log2(levels + 1))``, widened to a packable 2, 4 or 8."""
    needed = 1 + max(1, (levels).bit_length())
    return next(b for b in _pack.ALLOWED_BITS if b >= needed)


@dataclass
class DitherPayload:
    codes: torch.Tensor  # uint8, the packed sign+level codes
    scale: torch.Tensor  # fp32, one ∞-norm per bucket
    numel: int
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scale.numel()


class DitherCodec:
    def __init__(self, levels: int = 7, bucket_size: int = 512, seed: int | None = None):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels={levels!r}: use an int from 1 to {MAX_LEVELS} (the number of nonzero "
                             "power-of-two levels; 7 gives 4-bit codes)")
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 8 or \
                bucket_size & (bucket_size - 1):
            raise ValueError(f"bucket_size={bucket_size!r} is not supported; use a power of two >= 8")
        self.levels, self.bucket_size = levels, bucket_size
        self.bits = code_bits(levels)
        self.lo_exp = 1 - levels
        self.seeds = KeyedSeeds(seed)

    def encode(self, tensor: torch.Tensor, key: str | None = None) -> DitherPayload:
        """``tensor``'s length must be a multiple of ``bucket_size`` (the compressor pads to whole buckets)."""
        flat = tensor.detach().reshape(-1)
        if flat.numel() % self.bucket_size:
            raise ValueError(f"{flat.numel()} values are not whole buckets of {self.bucket_size}; pad first")
        buckets = flat.float().view(-1, self.bucket_size)
        scale = buckets.abs().amax(dim=1)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("cannot dither a tensor holding inf or NaN; clean or clip the input first")
        y = buckets / torch.where(scale > 0, scale, 1.0)[:, None]  # in [0, 1]: y = 1 exactly at the peak
        sign_level = _pow2.pow2_encode_unit(y.view(-1), self.lo_exp, seed=self.seeds.draw(key)).to(torch.int32)
        level = sign_level & 0x7F
        code = level | ((sign_level >> 7) << (self.bits - 1))
        return DitherPayload(_pack.pack_codes(code, self.bits), scale, flat.numel(), tensor.dtype)

    def decode(self, payload: DitherPayload) -> torch.Tensor:
        code = _pack.unpack_codes(payload.codes, self.bits)[:payload.numel]
        sign = (code >> (self.bits - 1)) & 1
        sign_level = ((code & ((1 << (self.bits - 1)) - 1)) | (sign << 7)).to(torch.uint8)
        y = _pow2.pow2_decode(Pow2Codes(sign_level, self.lo_exp, torch.float32))
        return (y.view(-1, self.bucket_size) * payload.scale[:, None]).view(-1).to(payload.dtype)

    def nbytes(self, payload: DitherPayload) -> int:
        return payload.nbytes

    def nbytes_for(self, numel: int) -> int:
        return numel * self.bits // 8 + 4 * (numel // self.bucket_size)

    def to_bytes(self, payload: DitherPayload, parts: int = 1) -> list[torch.Tensor]:
        """``parts`` equal slices (whole buckets each), every one its codes then its scales, to decode alone."""
        codes = payload.codes.view(parts, -1)
        scales = payload.scale.view(parts, -1).contiguous().view(torch.uint8).view(parts, -1)
        return list(torch.cat([codes, scales], dim=1).unbind(0))

    def from_bytes(self, buffer: torch.Tensor, numel: int, dtype: torch.dtype) -> DitherPayload:
        ncodes = numel * self.bits // 8
        scale = buffer[ncodes:ncodes + 4 * (numel // self.bucket_size)].clone().view(torch.float32)  # clone: alignment
        return DitherPayload(buffer[:ncodes], scale, numel, dtype)

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state["seeds"])

    def __repr__(self) -> str:
        return f"DitherCodec(levels={self.levels}, bucket_size={self.bucket_size})"
