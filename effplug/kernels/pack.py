"""Per-group uniform quantization with bit packing: ``quantize_pack`` and ``unpack_dequantize``.

Layout (DESIGN.md, "Packing order"): the flattened tensor is split into groups of ``group_size``
elements, the last one padded with code 0. Code ``q_j`` of padded element ``j`` lives in byte
``j // (8 // bits)`` at bit offset ``(j % (8 // bits)) * bits``. Each group stores ``zero`` (its minimum,
rounded down to the scale dtype) and ``scale = (max - zero) / (2**bits - 1)`` (rounded up), so every
element maps into ``[0, 2**bits - 1]`` without clipping. Quantization (ActNN, Chen et al. 2021, eq. 2):

    q = clamp(floor((x - zero) / scale + u), 0, 2**bits - 1),   x_hat = q * scale + zero

with ``u ~ U[0, 1)`` from the Philox stream of ``seed`` at the element index for stochastic rounding, ``u = 0.5`` for nearest.
``q * scale`` is exact in fp32 (8-bit code times 11-bit mantissa), so fused and unfused multiply-add agree
and the Triton and torch paths match bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.kernels import dispatch
from effplug.kernels.philox import resolve_seed, uniform24
from effplug.sizes import tensor_nbytes

ALLOWED_BITS = (1, 2, 4, 8)
MIN_GROUP, MAX_GROUP = 32, 4096
SCALE_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class QuantizedTensor:
    """Packed codes plus per-group scale and zero; ``nbytes`` counts every byte held."""

    data: torch.Tensor  # flat uint8
    scale: torch.Tensor  # one per group
    zero: torch.Tensor  # one per group (the group minimum)
    bits: int
    group_size: int
    shape: torch.Size
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return sum(tensor_nbytes(t) for t in (self.data, self.scale, self.zero))

    @property
    def device(self) -> torch.device:
        return self.data.device


def packed_nbytes(numel: int, bits: int, group_size: int, scale_dtype: torch.dtype = torch.float16) -> int:
    """Bytes ``quantize_pack`` holds for ``numel`` elements: codes plus a scale and a zero per group."""
    groups = -(-numel // group_size)
    elem = torch.empty((), dtype=scale_dtype).element_size()
    return groups * group_size * bits // 8 + 2 * groups * elem


def validate_quant_args(bits: int, group_size: int, scale_dtype: torch.dtype = torch.float16,
                        group_name: str = "group_size") -> None:
    """``group_name``: what the caller calls the group (CGX: ``bucket_size``), so the error names the user's knob."""
    if bits not in ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; use one of 1, 2, 4, 8")
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or group_size < MIN_GROUP
        or group_size > MAX_GROUP
        or group_size & (group_size - 1)
    ):
        raise ValueError(
            f"{group_name}={group_size!r} is not supported; use a power of two from {MIN_GROUP} to {MAX_GROUP}"
        )
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype={scale_dtype} is not supported; use torch.float16 or torch.bfloat16")


# -- directed rounding to a 16-bit float, done on the bit pattern so it is exact on every backend --------


def _step(y: torch.Tensor, up: bool) -> torch.Tensor:
    bits = y.view(torch.int16)
    if up:
        stepped = torch.where(y > 0, bits + 1, torch.where(y < 0, bits - 1, torch.ones_like(bits)))
    else:
        neg_tiny = torch.full_like(bits, -32767)  # 0x8001: the smallest negative subnormal
        stepped = torch.where(y > 0, bits - 1, torch.where(y < 0, bits + 1, neg_tiny))
    return stepped.view(y.dtype)


def round_down(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = v.to(dtype)
    return torch.where(y.float() > v, _step(y, up=False), y)


def round_up(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = v.to(dtype)
    return torch.where(y.float() < v, _step(y, up=True), y)


# -- torch reference ----------------------------------------------------------------------------------


# Elements per pass of the torch reference: its temporaries (fp32 copies, Philox words) stay a few MB
# instead of several times the input, and in cache.
CHUNK_ELEMENTS = 1 << 16
# Decoding holds only int32 codes and fp32 values per part: bigger parts, fewer per-part ops.
DECODE_CHUNK_ELEMENTS = 1 << 18


def _quantize_pack_torch(flat: torch.Tensor, bits, group_size, stochastic, seed, scale_dtype):
    n = flat.numel()
    groups = -(-n // group_size)
    data = torch.empty(groups * group_size * bits // 8, dtype=torch.uint8, device=flat.device)
    scale = torch.empty(groups, dtype=scale_dtype, device=flat.device)
    zero = torch.empty(groups, dtype=scale_dtype, device=flat.device)
    chunk_groups = max(1, CHUNK_ELEMENTS // group_size)
    for g0 in range(0, groups, chunk_groups):
        g1 = min(groups, g0 + chunk_groups)
        start, stop = g0 * group_size, min(n, g1 * group_size)
        codes, scale[g0:g1], zero[g0:g1] = _quantize_groups(flat[start:stop], g1 - g0, bits, group_size,
                                                            stochastic, seed, start, scale_dtype)
        data[start * bits // 8:g1 * group_size * bits // 8] = pack_codes(codes, bits)
    return data, scale, zero


def _quantize_groups(part, groups, bits, group_size, stochastic, seed, start, scale_dtype):
    """Codes, scales and zeros of ``groups`` groups starting at element ``start`` of the tensor (the last part
    may be short: it is padded, and its padding gets code 0)."""
    padded = groups * group_size
    n = part.numel()
    x = part.float()
    if n < padded:
        x = torch.nn.functional.pad(x, (0, padded - n))
    x = x.view(groups, group_size)
    if n < padded:
        valid = (torch.arange(padded, device=part.device) < n).view(groups, group_size)
        inf = torch.tensor(float("inf"), device=part.device)
        lo = torch.where(valid, x, inf).amin(dim=1)
        hi = torch.where(valid, x, -inf).amax(dim=1)
    else:
        valid = None
        lo, hi = x.amin(dim=1), x.amax(dim=1)
    zero = round_down(lo, scale_dtype)
    levels = float(2**bits - 1)
    scale = round_up((hi - zero.float()) / levels, scale_dtype)
    s = scale.float()[:, None]
    v = torch.where(s > 0, (x - zero.float()[:, None]) / s, 0.0)
    if stochastic:
        v += uniform24(seed, padded, part.device, start=start).view(groups, group_size)
    else:
        v += 0.5
    q = v.floor_().clamp_(0, levels)
    if valid is not None:
        q = torch.where(valid, q, 0.0)
    return q.view(-1), scale, zero


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into bytes, little-endian inside each byte (DESIGN packing order).

    The code count must be a multiple of ``8 // bits``; callers pad.
    """
    per_byte = 8 // bits
    columns = codes.to(torch.uint8).view(-1, per_byte)
    packed = columns[:, 0].clone()
    for j in range(1, per_byte):  # uint8 shifts and ors: no int32 copy, no reduction
        packed |= columns[:, j] << (j * bits)
    return packed


def unpack_codes(data: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: int32 codes, ``8 // bits`` per byte."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=data.device, dtype=torch.int32) * bits
    return ((data.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)).view(-1)


def _unpack_dequantize_torch(qt: QuantizedTensor, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(qt.numel, dtype=out_dtype, device=qt.device)
    chunk_groups = max(1, DECODE_CHUNK_ELEMENTS // qt.group_size)
    groups = qt.scale.numel()
    for g0 in range(0, groups, chunk_groups):  # in parts: the int32 codes and fp32 values stay small
        g1 = min(groups, g0 + chunk_groups)
        start, stop = g0 * qt.group_size, min(qt.numel, g1 * qt.group_size)
        data = qt.data[start * qt.bits // 8:g1 * qt.group_size * qt.bits // 8]
        codes = unpack_codes(data, qt.bits).view(-1, qt.group_size).float()
        x = codes.mul_(qt.scale[g0:g1].float()[:, None]).add_(qt.zero[g0:g1].float()[:, None])
        out[start:stop] = x.view(-1)[:stop - start]
    return out


# -- public API ---------------------------------------------------------------------------------------


def quantize_pack(
    x: torch.Tensor,
    bits: int,
    group_size: int = 128,
    stochastic: bool = False,
    seed: int | None = None,
    scale_dtype: torch.dtype = torch.float16,
    validate: bool = True,
) -> QuantizedTensor:
    """Quantize ``x`` to ``bits`` per element with a min/scale per group and pack the codes into bytes.

    ``stochastic=True`` rounds with ``u`` drawn from Philox(seed, element index): the same seed gives
    the same codes on the torch and Triton paths. Non-finite inputs, or groups whose range overflows the
    scale dtype, raise ``ValueError`` rather than produce corrupt codes; ``validate=False`` skips that
    check and its host synchronization, for callers that handle non-finite values themselves.
    """
    dispatch.check_float_tensor(x)
    validate_quant_args(bits, group_size, scale_dtype)
    seed = resolve_seed(seed) if stochastic else 0
    flat = x.reshape(-1)
    if flat.numel() == 0:
        empty = torch.empty(0, dtype=scale_dtype, device=x.device)
        data = torch.empty(0, dtype=torch.uint8, device=x.device)
        return QuantizedTensor(data, empty, empty.clone(), bits, group_size, x.shape, x.dtype)
    if dispatch.kernel_backend(flat) == "triton":
        data, scale, zero = dispatch.triton_kernels().quantize_pack(
            flat.contiguous(), bits, group_size, stochastic, seed, scale_dtype
        )
    else:
        data, scale, zero = _quantize_pack_torch(flat, bits, group_size, stochastic, seed, scale_dtype)
    if validate:
        check_finite_groups(scale, zero)
    return QuantizedTensor(data, scale, zero, bits, group_size, x.shape, x.dtype)


def check_finite_groups(scale: torch.Tensor, zero: torch.Tensor) -> None:
    """Raise unless every group's scale and zero are finite (a host sync)."""
    if not (torch.isfinite(scale).all() and torch.isfinite(zero).all()):
        raise ValueError(
            "cannot quantize: the input holds inf/NaN or a group range exceeds "
            f"{scale.dtype} (max {torch.finfo(scale.dtype).max:g}); clean the input or pass scale_dtype=torch.bfloat16"
        )


def unpack_dequantize(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode ``qt`` back to its original shape and dtype (or ``dtype``), contiguous."""
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"unpack_dequantize expects a QuantizedTensor; got {type(qt).__name__}")
    out_dtype = dtype or qt.dtype
    if out_dtype not in dispatch.SUPPORTED_DTYPES:
        raise ValueError(f"dtype={out_dtype} is not supported; use float32, float16 or bfloat16")
    if qt.numel == 0:
        return torch.empty(qt.shape, dtype=out_dtype, device=qt.device)
    if dispatch.kernel_backend(qt.data) == "triton":
        flat = dispatch.triton_kernels().unpack_dequantize(qt, out_dtype)
    else:
        flat = _unpack_dequantize_torch(qt, out_dtype)
    return flat.view(qt.shape)
