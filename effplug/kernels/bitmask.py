"""1-bit masks for the lossless payloads: a bool tensor, a ReLU output's ``x > 0`` pattern, and the 0-or-constant
float mask that CPU dropout saves. Triton kernels with torch references of the same contract.

Layout: bit ``j % 8`` of byte ``j // 8`` holds element ``j`` (the DESIGN packing order at 1 bit).

- ``pack_mask(x, positive=False)`` writes ``x != 0`` (or ``x > 0``) in one read of ``x``, with no bool
  temporary. With ``two_level=True`` the same pass also finds whether ``x`` is a two-level tensor (every nonzero
  element equal to a positive maximum) and returns that maximum, or None.
- ``unpack_mask(data, shape)`` gives the bools; ``unpack_mask(data, shape, value=v)`` gives ``bit ? v : 0``;
  ``unpack_mask(data, shape, rectify=inner)`` gives ``bit ? max(inner, tiny) : 0`` (a rectified payload keeps
  decoded positives positive).

Every value is copied or compared, never computed, so the paths agree bit for bit.
"""

from __future__ import annotations

import math

import torch

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def pack_mask(x: torch.Tensor, positive: bool = False, two_level: bool = False):
    """Packed bits of ``x != 0`` (``x > 0`` with ``positive``); with ``two_level`` also the maximum when ``x`` is
    two-level, else None (one host sync)."""
    flat = x.reshape(-1).contiguous()
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    n = flat.numel()
    if dispatch.kernel_backend(flat) == "triton" and n:
        def run():
            return dispatch.triton_kernels().pack_mask(flat, positive, two_level)
    else:
        def run():
            bit = (flat > 0) if positive else (flat != 0)
            bit = torch.nn.functional.pad(bit.to(torch.uint8), (0, (-n) % 8)).view(-1, 8).to(torch.int32)
            data = (bit << torch.arange(8, device=flat.device, dtype=torch.int32)).sum(1).to(torch.uint8)
            if not two_level:
                return data, None, None, None
            v = flat.float()
            low = torch.where(v != 0, v, float("inf")).amin().reshape(1) if n else v.new_full((1,), float("inf"))
            top = v.amax().reshape(1) if n else v.new_full((1,), float("-inf"))
            return data, top, low, v.isnan().sum().reshape(1).int()
    data, top, low, nan = fused_op("pack_mask", "elementwise", run, flat)
    if not two_level:
        return data
    top, low, nan = top.amax(), low.amin(), nan.sum()
    top_value, low_value, nans = torch.stack([top, low, nan.float()]).tolist()  # one host sync
    ok = nans == 0 and top_value > 0 and low_value == top_value
    return data, (top.to(x.dtype) if ok else None)


def unpack_mask(data: torch.Tensor, shape, value: torch.Tensor | None = None,
                rectify: torch.Tensor | None = None) -> torch.Tensor:
    """The bools of ``data`` in ``shape``; ``bit ? value : 0`` in ``value``'s dtype; or ``bit ? max(rectify,
    tiny) : 0`` in ``rectify``'s dtype (and shape)."""
    n = math.prod(shape)
    src = rectify if rectify is not None else value
    mode = 2 if rectify is not None else 1 if value is not None else 0
    if mode == 2:
        src = src.contiguous()
    out_dtype = src.dtype if src is not None else torch.bool
    floor = torch.finfo(out_dtype).tiny if mode == 2 else 0.0
    if dispatch.kernel_backend(data) == "triton" and n:
        def run():
            out = torch.empty(n, dtype=torch.uint8 if mode == 0 else out_dtype, device=data.device)
            dispatch.triton_kernels().unpack_mask(data, src if src is not None else out, out, n, floor, mode)
            return out.view(torch.bool) if mode == 0 else out
    else:
        def run():
            shifts = torch.arange(8, device=data.device, dtype=torch.int32)
            bit = ((data.to(torch.int32)[:, None] >> shifts) & 1).view(-1)[:n].bool()
            if mode == 0:
                return bit
            inner = src.reshape(-1).clamp_min(floor) if mode == 2 else src
            return torch.where(bit, inner, torch.zeros((), dtype=out_dtype, device=data.device))
    return fused_op("unpack_mask", "elementwise", run, data, *([src] if src is not None else [])).view(shape)
