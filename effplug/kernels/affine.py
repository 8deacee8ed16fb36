"""Per-channel affine quantization with a given range: ``quantize_affine`` and ``dequantize_affine``.

For callers that keep their own range (Mesa's running ``shift``/``clip``, eq. 4-5), channel ``c`` along
``axis`` maps through ``low[c]`` and ``step[c]``:

    q = clamp(floor((x - low[c]) / step[c] + u), 0, 2**bits - 1),   x_hat = q * step[c] + low[c]

with ``u`` from the Philox stream of ``seed`` at the element index (``u = 0.5`` for nearest). Codes are packed
in the DESIGN packing order (``kernels.pack.pack_codes``). The Triton and torch paths agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.kernels import dispatch
from effplug.kernels.pack import ALLOWED_BITS, pack_codes, unpack_codes
from effplug.kernels.philox import resolve_seed, uniform24
from effplug.sizes import tensor_nbytes


@dataclass
class AffineCodes:
    """Packed codes plus the fp32 ``low`` and ``step`` of each channel along ``axis``."""

    data: torch.Tensor  # flat uint8
    low: torch.Tensor  # fp32, one per channel
    step: torch.Tensor  # fp32, one per channel
    bits: int
    axis: int
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return sum(tensor_nbytes(t) for t in (self.data, self.low, self.step))


def _layout(shape, axis: int) -> tuple[int, int]:
    """``(channels, inner)``: element ``i``'s channel is ``(i // inner) % channels``."""
    inner = 1
    for d in shape[axis + 1:]:
        inner *= d
    return shape[axis], inner


def _codes_torch(flat, low, step, channels, inner, bits, stochastic, seed):
    n = flat.numel()
    channel = (torch.arange(n, device=flat.device) // inner) % channels
    v = (flat.float() - low[channel]) / step[channel]
    u = uniform24(seed, n, flat.device) if stochastic else 0.5
    return torch.floor(v + u).clamp_(0, 2**bits - 1).to(torch.uint8)


def quantize_affine(x: torch.Tensor, low: torch.Tensor, step: torch.Tensor, axis: int, bits: int,
                    stochastic: bool = True, seed: int | None = None) -> AffineCodes:
    """Quantize ``x`` with the per-channel ``low`` and ``step`` (positive) along ``axis``; see the module."""
    dispatch.check_float_tensor(x)
    if bits not in ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; use one of 1, 2, 4, 8")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for a {x.ndim}-D tensor")
    axis %= x.ndim
    channels, inner = _layout(x.shape, axis)
    low, step = low.float().reshape(-1).contiguous(), step.float().reshape(-1).contiguous()
    if low.numel() != channels or step.numel() != channels:
        raise ValueError(f"low and step need one value per channel along axis {axis} ({channels}); "
                         f"got {low.numel()} and {step.numel()}")
    seed = resolve_seed(seed) if stochastic else 0
    flat = x.reshape(-1)
    if dispatch.kernel_backend(flat) == "triton":
        codes = dispatch.triton_kernels().quantize_affine_codes(flat.contiguous(), low, step, channels, inner,
                                                                bits, stochastic, seed)
    else:
        codes = _codes_torch(flat, low, step, channels, inner, bits, stochastic, seed)
    codes = torch.nn.functional.pad(codes, (0, (-codes.numel()) % (8 // bits)))
    return AffineCodes(pack_codes(codes, bits), low, step, bits, axis, x.shape, x.dtype)


def dequantize_affine(payload: AffineCodes) -> torch.Tensor:
    n = 1
    for d in payload.shape:
        n *= d
    channels, inner = _layout(payload.shape, payload.axis)
    channel = (torch.arange(n, device=payload.data.device) // inner) % channels
    q = unpack_codes(payload.data, payload.bits)[:n].float()
    return (q * payload.step[channel] + payload.low[channel]).view(payload.shape).to(payload.dtype)
