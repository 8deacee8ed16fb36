"""Range estimators: the clipping value a fake quantizer uses, from one tensor.

Every function returns a clip ``c`` (per tensor, or one per channel along ``channel_dim``) for a grid whose
integer codes run over ``[-qmax, qmax]`` (symmetric) or ``[0, qmax]`` (unsigned; the data is non-negative), so
the step is ``c / qmax``. Asymmetric grids use :func:`minmax_range` directly.
"""

from __future__ import annotations

import torch

from effplug.kernels.channel_stats import channel_min_max, octav_tail

OCTAV_ITERATIONS = 30  # the recursion converges in 7-13 steps from E|x| (research note, sec. 4.2)
PERCENTILE_SAMPLE = 1 << 16  # kthvalue on a fixed random sample: torch.quantile is slow on large tensors
MSE_GRID_POINTS = 100


def _per_channel(x: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """``x`` as ``(channels, -1)`` (one row per tensor when ``channel_dim`` is None), in float32."""
    x = x.detach().float()
    if channel_dim is None:
        return x.reshape(1, -1)
    return x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)


def _shape_like(clip: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    return clip.reshape(()) if channel_dim is None else clip


def octav_clip(x: torch.Tensor, bits: int, per_channel_dim: int | None = None, *, noise_coefficient: float | None = None,
               iterations: int = OCTAV_ITERATIONS, init: torch.Tensor | None = None, tol: float = 1e-6) -> torch.Tensor:
    """OCTAV's MSE-optimal clipping scalar(s) (Sakr et al., ICML 2022, eq. 6).

    For a signed symmetric ``bits``-bit grid with step ``s * 2**(1 - bits)`` the quantization noise inside
    the range is ``s**2 * 4**-bits / 3``; Newton-Raphson on the clipping MSE gives the fixed-point recursion::

        s_{n+1} = E[|x| 1{|x| > s_n}] / (4^-B/3 * E[1{|x| <= s_n}] + E[1{|x| > s_n}])

    recomputed every iteration from ``s_0 = E|x|`` (or ``init``, a warm start), in one pass over ``|x|`` per
    iteration (``effplug.kernels.channel_stats.octav_tail``; its tail sum adds in float64). ``noise_coefficient``
    replaces ``4^-B/3`` for other grids: ``1 / (12 qmax^2)`` for integer codes in ``[-qmax, qmax]``.
    Returns a scalar tensor, or one value per channel along ``per_channel_dim``.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits={bits!r} is not supported by octav_clip; use an integer from 1 to 16")
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise ValueError(f"octav_clip needs a non-empty tensor of values to clip; got "
                         f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' of shape ' + str(tuple(x.shape))}")
    coefficient = 4.0 ** (-bits) / 3.0 if noise_coefficient is None else float(noise_coefficient)
    magnitude = _per_channel(x, per_channel_dim).abs()
    clip = magnitude.mean(dim=1) if init is None else init.detach().float().reshape(-1).expand(magnitude.shape[0]).clone()
    clip = clip.clamp_min(torch.finfo(torch.float32).tiny)
    peak = magnitude.amax(dim=1)  # a row with nothing outside its clip takes its max (optimal-ish)
    for _ in range(iterations):
        tail_sum, count_out = octav_tail(magnitude, clip)  # one pass over |x| per Newton step
        count_out = count_out.float()
        count_in = magnitude.shape[1] - count_out
        new = tail_sum / (coefficient * count_in + count_out).clamp_min(1e-12)
        new = torch.where(count_out > 0, new, peak)
        done = (new - clip).abs() <= tol * clip
        clip = new.clamp_min(torch.finfo(torch.float32).tiny)
        if bool(done.all()):
            break
    return _shape_like(clip, per_channel_dim)


def _min_max(x: torch.Tensor, channel_dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tensor or per channel, in one read of ``x`` (effplug.kernels.channel_stats), without an fp32 copy."""
    x = x.detach()
    if channel_dim is None:
        return channel_min_max(x.reshape(1, -1), 0)
    return channel_min_max(x, channel_dim)


def absmax_clip(x: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
    lo, hi = _min_max(x, channel_dim)
    return _shape_like(torch.maximum(-lo, hi), channel_dim)


def minmax_range(x: torch.Tensor, channel_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` per tensor or per channel, widened to include 0 so zero stays exact."""
    lo, hi = _min_max(x, channel_dim)
    return _shape_like(lo.clamp_max(0.0), channel_dim), _shape_like(hi.clamp_min(0.0), channel_dim)


def percentile_clip(x: torch.Tensor, percentile: float = 99.99, channel_dim: int | None = None) -> torch.Tensor:
    """The ``percentile`` of ``|x|``, from at most 65,536 evenly strided samples per row (kthvalue)."""
    rows = _per_channel(x, channel_dim).abs()
    if rows.shape[1] > PERCENTILE_SAMPLE:
        rows = rows[:, :: -(-rows.shape[1] // PERCENTILE_SAMPLE)]
    k = max(1, min(rows.shape[1], round(rows.shape[1] * percentile / 100.0)))
    return _shape_like(rows.kthvalue(k, dim=1).values, channel_dim)


def quantization_mse(x: torch.Tensor, clip: torch.Tensor, qmax: int, signed: bool, channel_dim: int | None = None) -> torch.Tensor:
    """Mean squared error of round-to-nearest on ``[-qmax, qmax]`` (or ``[0, qmax]``) codes with step ``clip/qmax``."""
    rows = _per_channel(x, channel_dim)
    step = (clip.reshape(-1, 1) / qmax).clamp_min(1e-30)
    codes = torch.clamp(torch.round(rows / step), -qmax if signed else 0, qmax)
    return ((codes * step - rows) ** 2).mean(dim=1)


def mse_clip(x: torch.Tensor, qmax: int, signed: bool, channel_dim: int | None = None,
             points: int = MSE_GRID_POINTS) -> torch.Tensor:
    """Grid search: the clip in ``{max|x| * k / points}`` with the smallest quantization MSE."""
    top = absmax_clip(x, channel_dim).reshape(-1)
    best_err = torch.full_like(top, float("inf"))
    best = top.clone()
    for k in range(1, points + 1):
        candidate = top * (k / points)
        err = quantization_mse(x, candidate, qmax, signed, channel_dim)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, candidate, best)
    return _shape_like(best, channel_dim)
