"""Per-channel statistics in one read of the tensor: the min and max that Mesa's running range (Pan et al.,
eq. 4-5) and the min-max / absmax observers start from, and OCTAV's tail sum and count for one Newton step
(Sakr et al., eq. 6). Triton kernels with torch references of the same contract.

Contract. ``channel_min_max(x, axis)`` returns fp32 ``(min, max)`` per channel along ``axis``, NaN where the
channel holds a NaN (as ``torch.amin`` does). Min and max are exact in any order, so the two paths agree bit
for bit. ``octav_tail(|x| rows, clip)`` returns, per row, ``fp32(Σ |x|·1{|x| > clip})`` summed in float64
(per-program partials, then one float64 sum; the orders differ, the rounded fp32 agrees unless a sum lands
within ~2^-29 of a rounding boundary) and the exact count ``#{|x| > clip}``.
"""

from __future__ import annotations

import torch

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def _layout(shape, axis: int) -> tuple[int, int, int]:
    outer = inner = 1
    for d in shape[:axis]:
        outer *= d
    for d in shape[axis + 1:]:
        inner *= d
    return outer, shape[axis], inner


def channel_min_max(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(min, max)`` of each channel along ``axis`` of ``x``, read once; see the module."""
    dispatch.check_float_tensor(x)
    if x.numel() == 0:
        raise ValueError("channel_min_max needs a non-empty tensor")
    axis %= x.ndim
    outer, channels, inner = _layout(x.shape, axis)
    x = x.contiguous()
    if dispatch.kernel_backend(x) == "triton":
        def run():
            lo, hi, nan = dispatch.triton_kernels().min_max_partials(x, outer, channels, inner)
            has_nan = nan.sum(0) > 0
            nan_value = torch.full((), float("nan"), device=x.device)
            return (torch.where(has_nan, nan_value, lo.amin(0)), torch.where(has_nan, nan_value, hi.amax(0)))
    else:
        def run():
            view = x.view(outer, channels, inner)
            return view.amin(dim=(0, 2)).float(), view.amax(dim=(0, 2)).float()
    return fused_op("channel_min_max", "reduction", run, x)


def octav_tail(magnitude: torch.Tensor, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the fp32 ``magnitude [R, N]``: ``(Σ m·1{m > clip_r}, #{m > clip_r})``; see the module."""
    if magnitude.dtype != torch.float32 or magnitude.dim() != 2:
        raise ValueError(f"magnitude must be 2-D float32 [rows, n]; got {magnitude.dtype} {tuple(magnitude.shape)}")
    magnitude, clip = magnitude.contiguous(), clip.float().reshape(-1).contiguous()
    if dispatch.kernel_backend(magnitude) == "triton":
        def run():
            tail, count = dispatch.triton_kernels().octav_tail(magnitude, clip)
            return tail.sum(1).float(), count.sum(1)
    else:
        def run():
            outside = magnitude > clip[:, None]
            return torch.where(outside, magnitude, 0.0).sum(1, dtype=torch.float64).float(), outside.sum(1)
    return fused_op("octav_tail", "reduction", run, magnitude, clip)
