"""Fake quantization (quantize, then dequantize) on an integer grid, per tensor or per channel.

Contract, in fp32 whatever the input dtype, with ``r = 1 / scale`` computed once on the host::

    codes = clamp(round_half_even(x * r) + zero_point, qmin, qmax)
    out   = (codes - zero_point) * scale                          (cast back to x.dtype)

Multiplying by the reciprocal (instead of dividing) is exactly rounded on every backend, so the Triton
kernel and the torch reference agree bit for bit. ``scale``/``zero_point`` hold one value, or one per
channel along ``channel_dim``.
"""

from __future__ import annotations

import math

import torch

from effplug.kernels import dispatch


def _channel_params(x: torch.Tensor, scale, zero_point, channel_dim: int | None):
    channels = 1 if channel_dim is None else x.shape[channel_dim]
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(-1)
    zero = torch.as_tensor(zero_point, dtype=torch.float32, device=x.device).reshape(-1)
    for name, value in (("scale", scale), ("zero_point", zero)):
        if value.numel() not in (1, channels):
            raise ValueError(f"{name} has {value.numel()} values; give 1 or one per channel ({channels} along "
                             f"dim {channel_dim})")
    return scale.expand(channels).contiguous(), zero.expand(channels).contiguous(), channels


def _view_shape(x: torch.Tensor, channel_dim: int | None) -> list:
    shape = [1] * x.dim()
    if channel_dim is not None:
        shape[channel_dim] = -1
    return shape


def quantization_codes(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int,
                       channel_dim: int | None = None) -> torch.Tensor:
    """The fp32 integer-valued codes of the contract (torch; export and tests use it)."""
    scale, zero, _ = _channel_params(x, scale, zero_point, channel_dim)
    shape = _view_shape(x, channel_dim)
    return torch.clamp(torch.round(x.float() * scale.reciprocal().view(shape)) + zero.view(shape), qmin, qmax)


def _fake_quantize_torch(x, scale, zero, qmin, qmax, channel_dim):
    shape = _view_shape(x, channel_dim)
    codes = quantization_codes(x, scale, zero, qmin, qmax, channel_dim)
    return ((codes - zero.view(shape)) * scale.view(shape)).to(x.dtype)


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int,
                  channel_dim: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` (the contract above); same shape and dtype as ``x``. No autograd."""
    dispatch.check_float_tensor(x)
    if not (isinstance(qmin, int) and isinstance(qmax, int) and qmin < qmax):
        raise ValueError(f"need integers qmin < qmax; got qmin={qmin!r}, qmax={qmax!r}")
    if channel_dim is not None:
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or not -x.dim() <= channel_dim < x.dim():
            raise ValueError(f"channel_dim={channel_dim!r} is out of range for a {x.dim()}-D tensor; use a dimension "
                             f"in [{-x.dim()}, {x.dim() - 1}] or None for one scale per tensor")
        channel_dim = channel_dim % x.dim()
    scale, zero, channels = _channel_params(x, scale, zero_point, channel_dim)
    if x.numel() == 0:
        return x.clone()
    if dispatch.kernel_backend(x) == "triton":
        inner = 1 if channel_dim is None else math.prod(x.shape[channel_dim + 1 :])
        out = dispatch.triton_kernels().fake_quantize(x.contiguous(), scale.reciprocal(), scale, zero, qmin, qmax,
                                                      channels, inner)
        return out.view(x.shape)
    return _fake_quantize_torch(x, scale, zero, qmin, qmax, channel_dim)
