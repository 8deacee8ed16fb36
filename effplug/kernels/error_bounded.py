"""Error-bounded linear-scaling codes (SZ's quantizer, Di & Cappello 2016, as COMET uses it): Triton kernels
with torch references of the same contract.

For groups of ``group_size`` elements of the flattened tensor (the last one padded with the last value, so its
pad codes stay in range) and a bin width ``step = 2 * eb``:

    zero_g = min(group g),   q = floor((x - zero_g) / step + 0.5),   x_hat = (zero_g + q * step) in x's dtype

so ``|x - x_hat| <= eb`` up to fp rounding. Three ops:

- ``error_bounded_stats`` reads ``x`` once and gives, per group, ``zero_g``, the largest code and the largest
  ``|x - x_hat|`` (inf where the group holds inf/NaN): everything needed to pick the code width and to check
  the bound, without writing a code.
- ``error_bounded_pack`` reads ``x`` once more and writes the codes at that width: packed bytes for 1-8 bits
  (DESIGN packing order), ``q - 32768`` as int16 for 16.
- ``error_bounded_decode`` writes ``x_hat``.

The stats kernel computes ``x_hat`` with the same expression as the decode kernel, so on a GPU the bound it
checks is the one decode delivers, whatever the compiler contracts into an FMA. Under ``TRITON_INTERPRET=1``
all three agree with torch bit for bit.
"""

from __future__ import annotations

import math

import torch

from effplug.kernels import dispatch
from effplug.kernels.pack import pack_codes, unpack_codes
from effplug.kernels.regions import fused_op

WIDTHS = (1, 2, 4, 8, 16)


def _grouped(flat: torch.Tensor, group_size: int) -> torch.Tensor:
    n = flat.numel()
    x = flat.float()
    pad = (-n) % group_size
    if pad:
        x = torch.cat([x, x[-1:].expand(pad)])
    return x.view(-1, group_size)


def _codes(x: torch.Tensor, zero: torch.Tensor, step: float) -> torch.Tensor:
    return torch.floor((x - zero[:, None]) / step + 0.5)


def _check(flat: torch.Tensor, group_size: int) -> None:
    dispatch.check_float_tensor(flat)
    if flat.numel() == 0:
        raise ValueError("error-bounded codes need a non-empty tensor")
    if group_size < 8 or group_size & (group_size - 1):
        raise ValueError(f"group_size={group_size!r} is not supported; use a power of two >= 8")


def error_bounded_stats(x: torch.Tensor, step: float, group_size: int):
    """Per group: fp32 ``zero``, the largest code (fp32) and the largest decode error (inf for inf/NaN)."""
    flat = x.reshape(-1).contiguous()
    _check(flat, group_size)
    if dispatch.kernel_backend(flat) == "triton":
        def run():
            return dispatch.triton_kernels().error_bounded_stats(flat, step, group_size)
    else:
        def run():
            g = _grouped(flat, group_size)
            zero = g.amin(1)
            q = _codes(g, zero, step)
            err = ((zero[:, None] + q * step).to(flat.dtype).float() - g).abs()
            err = torch.where(err.isnan() | g.isinf(), float("inf"), err)
            return zero, q.amax(1), err.amax(1)
    return fused_op("error_bounded_stats", "reduction", run, flat)


def code_width(top: float) -> int | None:
    """The narrowest of 1, 2, 4, 8, 16 bits that holds codes up to ``top``; None when none does."""
    return next((w for w in WIDTHS if math.isfinite(top) and top < 2**w), None)


def error_bounded_pack(x: torch.Tensor, zero: torch.Tensor, step: float, group_size: int, width: int) -> torch.Tensor:
    """The codes of every group at ``width`` bits: uint8 bytes (1-8 bits) or int16 ``q - 32768`` (16)."""
    if width not in WIDTHS:
        raise ValueError(f"width={width!r} is not supported; use one of {WIDTHS}")
    flat = x.reshape(-1).contiguous()
    _check(flat, group_size)
    if dispatch.kernel_backend(flat) == "triton":
        def run():
            return dispatch.triton_kernels().error_bounded_pack(flat, zero, step, group_size, width)
    else:
        def run():
            q = _codes(_grouped(flat, group_size), zero, step).view(-1)
            return (q - 32768).to(torch.int16) if width == 16 else pack_codes(q, width)
    return fused_op("error_bounded_pack", "elementwise", run, flat, zero)


def error_bounded_decode(data: torch.Tensor, zero: torch.Tensor, step: float, group_size: int, width: int,
                         shape, dtype: torch.dtype) -> torch.Tensor:
    """``x_hat = zero_g + q * step`` in ``dtype`` and ``shape``."""
    n = math.prod(shape)
    if dispatch.kernel_backend(data if data.is_cuda else zero) == "triton":
        def run():
            return dispatch.triton_kernels().error_bounded_decode(data, zero, step, group_size, width, n, dtype)
    else:
        def run():
            q = data.to(torch.float32) + 32768 if width == 16 else unpack_codes(data, width).float()
            return (zero[:, None] + q.view(-1, group_size) * step).view(-1)[:n].to(dtype)
    return fused_op("error_bounded_decode", "elementwise", run, data, zero).view(shape)
