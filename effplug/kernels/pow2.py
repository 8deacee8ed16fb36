"""Unbiased stochastic rounding to powers of two: natural compression and LUQ's log quantizer.

Both share one primitive on a non-negative magnitude ``t`` and a lowest exponent ``lo``:

* ``t >= 2**lo``, ``t`` in ``[2**e, 2**(e+1))``: round up to ``2**(e+1)`` with probability
  ``(t - 2**e) / 2**e`` (the 23-bit mantissa over ``2**23``), else down to ``2**e``.
  This is natural compression C_nat (Horvath et al. 2022, eq. 3): ``E[C(t)] = t``.
* ``t < 2**lo`` (stochastic underflow): ``2**lo`` with probability ``t / 2**lo``, else 0. Also unbiased.

The uniform draw is Philox(seed, element index), so the torch and Triton paths agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.kernels import dispatch
from effplug.kernels.philox import random_words, random_words_streams, resolve_seed

MIN_EXP = -126  # smallest normal fp32 exponent; subnormals go through the underflow branch
CODE_EXP_LEVELS = 127  # exponent codes 1..127 in the 8-bit sign+exponent form, code 0 means zero


@dataclass
class Pow2Codes:
    """8-bit sign+exponent codes: bit 7 is the sign, bits 0-6 hold ``e - lo_exp + 1`` (0 means zero)."""

    codes: torch.Tensor  # uint8, same shape as the input
    lo_exp: int
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4  # codes plus the int32 base exponent


CHUNK_ELEMENTS = 1 << 18  # elements per pass of the torch path (a multiple of 4: whole Philox counters)


def _pow2_magnitude_torch(t: torch.Tensor, seed: int, lo_exp: int) -> torch.Tensor:
    return _pow2_magnitude_from_words(t, random_words(seed, t.numel(), t.device).view(t.shape), lo_exp)


def _pow2_magnitude_from_words(t: torch.Tensor, r: torch.Tensor, lo_exp) -> torch.Tensor:
    """``lo_exp``: an int, or an int32 tensor broadcast against ``t`` (one base exponent per stream)."""
    bits = t.view(torch.int32)
    field = bits >> 23  # t >= 0 (an absolute value, NaN included): the sign bit is clear
    r24 = (r >> 8).to(torch.int32)
    # up with probability mantissa / 2**23; 2**128 overflows fp32 to inf, so the top binade [2**127, max] rounds
    # down to 2**127 (biased there only)
    round_up = (r24 >> 1) < (bits & 0x7FFFFF)
    round_up &= field < 254
    magnitude = ((field + round_up) << 23).view(torch.float32)
    lo = torch.as_tensor(lo_exp, dtype=torch.int32, device=t.device)
    lowest = ((lo + 127) << 23).view(torch.float32)
    small = t < lowest  # stochastic underflow: 2**lo with probability t / 2**lo, else 0
    if t.is_cuda or t.dim() != 1:
        magnitude = torch.where(field == 255, t, magnitude)  # inf and NaN pass through
        return torch.where(small, _underflow(t, r24, lo, lowest), magnitude)
    special = (field == 255).nonzero().squeeze(1)  # on CPU only the few special elements are indexed
    if special.numel():
        magnitude[special] = t[special]
    where = small.nonzero().squeeze(1)
    if where.numel():
        lo_small = lo[where] if lo.dim() else lo
        magnitude[where] = _underflow(t[where], r24[where], lo_small, ((lo_small + 127) << 23).view(torch.float32))
    return magnitude


def _underflow(t, r24, lo, lowest):
    u = r24.float().mul_(1.0 / 16777216.0)
    p = t * ((127 - lo) << 23).view(torch.float32)  # t * 2**-lo_exp, exactly
    return torch.where(u < p, lowest, 0.0)


def _codes_from_magnitude(mag: torch.Tensor, negative: torch.Tensor, lo_exp: int) -> torch.Tensor:
    exponent = ((mag.view(torch.int32) >> 23) & 0xFF) - 127
    code = torch.where(mag > 0, exponent - lo_exp + 1, torch.zeros_like(exponent))
    code = code | (negative.to(torch.int32) << 7)
    return code.to(torch.uint8)


def _pow2_sr(x: torch.Tensor, seed: int, alpha: float, lo_exp: int, emit_codes: bool) -> torch.Tensor:
    """Magnitudes ``|x| / alpha`` rounded to powers of two, returned as ``sign * alpha * mag`` or as codes."""
    flat = x.reshape(-1)
    if dispatch.kernel_backend(flat) == "triton":
        out = dispatch.triton_kernels().pow2_sr(flat.contiguous(), seed, alpha, lo_exp, emit_codes)
        return out.view(x.shape)
    out = torch.empty(flat.numel(), dtype=torch.uint8 if emit_codes else x.dtype, device=x.device)
    alpha_t = torch.tensor(alpha, dtype=torch.float32, device=x.device)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):  # in parts: temporaries stay small and in cache
        xf = flat[start:start + CHUNK_ELEMENTS].float()
        t = xf.abs() if alpha == 1.0 else xf.abs().div_(alpha_t)  # dividing by 1 is exact: skip it
        words = random_words(seed, t.numel(), t.device, start=start)
        mag = _pow2_magnitude_from_words(t, words, lo_exp)
        if emit_codes:
            out[start:start + t.numel()] = _codes_from_magnitude(mag, xf < 0, lo_exp)
        else:
            value = mag if alpha == 1.0 else mag * alpha_t
            out[start:start + t.numel()] = torch.where(xf < 0, -value, value)
    return out.view(x.shape)


def pow2_round(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Natural compression: each element becomes ``±2**e`` or ``±2**(e+1)``, unbiased; zeros stay zero."""
    dispatch.check_float_tensor(x)
    if x.numel() == 0:
        return torch.empty_like(x)
    return _pow2_sr(x, resolve_seed(seed), 1.0, MIN_EXP, emit_codes=False)


def _peak(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``max|x|`` in one pass and without an ``|x|`` temporary (NaN when ``x`` holds one)."""
    lo, hi = torch.aminmax(x.detach())
    return torch.maximum(-lo, hi).float()


def _exponent_of(value: float) -> int:
    bits = torch.tensor(value, dtype=torch.float32).view(torch.int32).item()
    return ((bits >> 23) & 0xFF) - 127


def pow2_encode(x: torch.Tensor, seed: int | None = None) -> Pow2Codes:
    """Natural compression to 8-bit sign+exponent codes (one byte per element plus a base exponent).

    The 127 exponent codes cover ``[2**(e_max-125), 2**(e_max+1)]`` where ``e_max`` is the exponent of
    ``max|x|``; smaller magnitudes take the unbiased stochastic-underflow branch to 0 or the lowest level.
    """
    dispatch.check_float_tensor(x)
    if x.numel() == 0:
        return Pow2Codes(torch.empty(x.shape, dtype=torch.uint8, device=x.device), MIN_EXP, x.dtype)
    peak = float(_peak(x))
    if peak != peak or peak == float("inf"):
        raise ValueError("cannot pow2-encode a tensor holding inf or NaN; clean or clip the input first")
    lo_exp = MIN_EXP if peak == 0 else max(MIN_EXP, _exponent_of(peak) + 1 - (CODE_EXP_LEVELS - 1))
    codes = _pow2_sr(x, resolve_seed(seed), 1.0, lo_exp, emit_codes=True)
    return Pow2Codes(codes, lo_exp, x.dtype)


def pow2_encode_unit(y: torch.Tensor, lo_exp: int, seed: int | None = None) -> torch.Tensor:
    """Sign+level codes of values with ``|y| <= 1`` on the levels ``{0, 2**lo_exp, ..., 1/2, 1}``: natural
    dithering's rounding (Horváth et al. 2022, Sec. 4) once ``y`` is divided by its norm. Code layout as
    :class:`Pow2Codes` with base ``lo_exp``: levels ``1 .. 1 - lo_exp`` in bits 0-6, the sign in bit 7."""
    dispatch.check_float_tensor(y)
    if not MIN_EXP <= lo_exp <= 0:
        raise ValueError(f"lo_exp={lo_exp!r}: use an int from {MIN_EXP} to 0")
    if y.numel() == 0:
        return torch.empty(y.shape, dtype=torch.uint8, device=y.device)
    return _pow2_sr(y, resolve_seed(seed), 1.0, lo_exp, emit_codes=True)


def pow2_encode_many(tensors: list[torch.Tensor], seeds: list[int]) -> list[Pow2Codes]:
    """``[pow2_encode(t, s) for t, s in zip(tensors, seeds)]``, bit for bit, in one pass on the torch path.

    Gradient compressors encode each parameter on its own stream; one Philox pass over all of them saves the
    per-call cost (about 0.4 ms per call on CPU). The Triton path calls the kernel once per tensor.
    """
    if dispatch.kernel_backend(tensors[0]) == "triton" or len(tensors) == 1:
        return [pow2_encode(t, seed=s) for t, s in zip(tensors, seeds, strict=True)]
    # big tensors on their own (chunked, one seed: no per-element seed or base exponent to build), small
    # ones together in one pass
    big = [t.numel() >= MANY_ALONE_ELEMENTS for t in tensors]
    out = dict(zip([i for i, b in enumerate(big) if not b],
                   _pow2_encode_together([t for t, b in zip(tensors, big, strict=True) if not b],
                                         [s for s, b in zip(seeds, big, strict=True) if not b]) if not all(big) else [],
                   strict=True))
    out.update({i: pow2_encode(tensors[i], seed=seeds[i]) for i, b in enumerate(big) if b})
    return [out[i] for i in range(len(tensors))]


MANY_ALONE_ELEMENTS = 1 << 15  # pow2_encode_many encodes a tensor this big alone


def _pow2_encode_together(tensors: list[torch.Tensor], seeds: list[int]) -> list[Pow2Codes]:
    if len(tensors) == 1:
        return [pow2_encode(tensors[0], seed=seeds[0])]
    flat = [t.detach().reshape(-1).float() for t in tensors]
    lo_exps = []
    for t in flat:
        peak = float(_peak(t)) if t.numel() else 0.0
        if peak != peak or peak == float("inf"):
            raise ValueError("cannot pow2-encode a tensor holding inf or NaN; clean or clip the input first")
        lo_exps.append(MIN_EXP if peak == 0 else max(MIN_EXP, _exponent_of(peak) + 1 - (CODE_EXP_LEVELS - 1)))
    lengths = [t.numel() for t in flat]
    device = tensors[0].device
    values = torch.cat(flat)
    words = random_words_streams([resolve_seed(s) for s in seeds], lengths, device)
    lo = torch.repeat_interleave(torch.tensor(lo_exps, dtype=torch.int32, device=device),
                                 torch.tensor(lengths, device=device))
    codes = torch.empty(values.numel(), dtype=torch.uint8, device=device)
    for start in range(0, values.numel(), CHUNK_ELEMENTS):  # in parts: temporaries stay small and in cache
        part, part_lo = values[start:start + CHUNK_ELEMENTS], lo[start:start + CHUNK_ELEMENTS]
        magnitude = _pow2_magnitude_from_words(part.abs(), words[start:start + CHUNK_ELEMENTS], part_lo)
        codes[start:start + part.numel()] = _codes_from_magnitude(magnitude, part < 0, part_lo)
    return [Pow2Codes(c.view(t.shape), e, t.dtype) for c, e, t in zip(codes.split(lengths), lo_exps, tensors,
                                                                        strict=True)]


def pow2_decode(payload: Pow2Codes) -> torch.Tensor:
    """Codes back to ``±2**e`` values in the original dtype (an elementwise torch op on every backend). The fp32
    bit pattern is built directly: exponent field ``level - 1 + lo_exp + 127``, the code's sign bit on top."""
    codes = payload.codes.to(torch.int32)
    level = codes & 0x7F
    magnitude = ((level + (payload.lo_exp + 126)) << 23) * (level > 0)  # level 0 is zero
    return (magnitude | ((codes >> 7) << 31)).view(torch.float32).to(payload.dtype)


def log_quantize(x: torch.Tensor, bits: int = 4, seed: int | None = None) -> torch.Tensor:
    """LUQ's logarithmic unbiased quantizer (Chmiel et al., ICLR 2023, Sec. 4, eqs. 9-11).

    Radix-2 format with 1 sign bit and ``bits - 1`` exponent bits. The underflow threshold is
    ``alpha = max|x| / 2**(2**(bits-1) - 1)``; magnitudes below it are pruned stochastically to 0 or
    ``alpha`` (unbiased), and the rest round stochastically between neighbouring levels
    ``alpha * 2**k``. ``E[log_quantize(x)] = x``. Returns the dequantized values in ``x``'s dtype.
    """
    dispatch.check_float_tensor(x)
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits={bits!r} is not supported for log_quantize; use an int from 2 to 8")
    if x.numel() == 0:
        return torch.empty_like(x)
    peak = _peak(x)
    if not torch.isfinite(peak):
        raise ValueError("cannot log-quantize a tensor holding inf or NaN")
    if peak.item() == 0:
        return torch.zeros_like(x)
    alpha = (peak / 2.0 ** (2 ** (bits - 1) - 1)).item()
    return _pow2_sr(x, resolve_seed(seed), alpha, 0, emit_codes=False)
