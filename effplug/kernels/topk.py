"""Top-k by magnitude: ``topk_select(x, ratio)`` returns the k largest-|x| values and their flat indices.

Contract shared by both backends: ``k = ceil(ratio * numel)``; ties at the threshold go to the lowest
indices; the output is ordered by index; a NaN counts as the largest magnitude (as +inf does), so exactly
k values come back and the NaN among them. The threshold (the k-th largest magnitude) is found with
``torch.kthvalue`` on both paths; the Triton path does the selection and the ordered compaction.
"""

from __future__ import annotations

import math

import torch

from effplug.kernels import dispatch


def topk_count(numel: int, ratio: float) -> int:
    return min(numel, math.ceil(ratio * numel))


def validate_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio!r} is not supported; use a number in (0, 1], e.g. 0.01 for 1%")


def _magnitude(flat: torch.Tensor) -> torch.Tensor:
    """|x| in fp32 with NaN as +inf: NaN compares false with everything and would fall out of the top k."""
    return torch.nan_to_num(flat.abs().float(), nan=float("inf"))


def _threshold(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    return torch.kthvalue(magnitude.float(), magnitude.numel() - k + 1).values


def _topk_select_torch(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    magnitude = _magnitude(flat)
    threshold = _threshold(magnitude, k)
    above = magnitude > threshold
    tied = magnitude == threshold
    still_needed = k - above.sum()
    keep = above | (tied & (torch.cumsum(tied, 0) <= still_needed))
    indices = keep.nonzero().squeeze(1)
    return flat[indices], indices


def topk_select(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``ceil(ratio * numel)`` largest-magnitude elements of ``x`` (flattened), ordered by index."""
    dispatch.check_float_tensor(x)
    validate_ratio(ratio)
    flat = x.reshape(-1)
    k = topk_count(flat.numel(), ratio)
    if k == 0:
        return flat[:0].clone(), torch.empty(0, dtype=torch.int64, device=x.device)
    if dispatch.kernel_backend(flat) == "triton":
        flat = flat.contiguous()
        threshold = _threshold(_magnitude(flat), k)
        return dispatch.triton_kernels().topk_select(flat, threshold, k)
    return _topk_select_torch(flat, k)
