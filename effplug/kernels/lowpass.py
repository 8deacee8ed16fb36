"""DIVISION's high-frequency residual (Wang et al., ICLR 2023, eq. 3-5), quantized in the pass that forms it.

For a map ``x [B, C, H, W]`` and its stored low-pass part ``lfc [B, C, ceil(H/kh), ceil(W/kw)]`` (bf16):

    HFC = x - Upsample_k(lfc)                       (the prologue, per element, in fp32)
    codes, scale, zero = quantize_pack(HFC, ...)    (the ActNN group quantizer, eq. 2 there)

and back, ``x_hat = Upsample_k(lfc) + dequant(codes)`` in one pass. The Triton kernels compute the residual in
registers, so neither the upsampled map nor the fp32 residual is ever written; the torch reference forms both
and calls the group quantizer's reference, which gives the same codes bit for bit for the same seed.
"""

from __future__ import annotations

import torch

from effplug.kernels import dispatch
from effplug.kernels.pack import (
    QuantizedTensor,
    _quantize_pack_torch,
    _unpack_dequantize_torch,
    check_finite_groups,
    validate_quant_args,
)
from effplug.kernels.philox import resolve_seed
from effplug.kernels.regions import fused_op


def upsample(lfc: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """fp32 ``lfc`` repeated ``kh x kw`` and cropped to ``size``: each position's low-pass value."""
    kh, kw = window
    up = lfc.float().repeat_interleave(kh, dim=2)[:, :, : size[0]]
    return up.repeat_interleave(kw, dim=3)[:, :, :, : size[1]]


def _check(x_map: torch.Tensor, lfc: torch.Tensor, window) -> None:
    dispatch.check_float_tensor(x_map)
    kh, kw = window
    h, w = x_map.shape[-2:]
    expected = (*x_map.shape[:2], -(-h // kh), -(-w // kw))
    if x_map.ndim != 4 or tuple(lfc.shape) != expected:
        raise ValueError(f"the map must be 4-D [B, C, H, W] and lfc {list(expected)} for window {tuple(window)}; "
                         f"got {list(x_map.shape)} and {list(lfc.shape)}")


def lowpass_residual_quantize(x_map: torch.Tensor, lfc: torch.Tensor, window: tuple[int, int], bits: int,
                              group_size: int = 128, stochastic: bool = True, seed: int | None = None,
                              scale_dtype: torch.dtype = torch.bfloat16, validate: bool = True) -> QuantizedTensor:
    """``quantize_pack(x_map - Upsample(lfc))`` without writing the residual; see the module. The payload has
    the map's shape and dtype, which is what ``lowpass_residual_dequantize`` returns."""
    _check(x_map, lfc, window)
    validate_quant_args(bits, group_size, scale_dtype)
    seed = resolve_seed(seed) if stochastic else 0
    x_map, lfc = x_map.contiguous(), lfc.contiguous()
    if dispatch.kernel_backend(x_map) == "triton":
        def run():
            return dispatch.triton_kernels().lowpass_residual_quantize(x_map, lfc, tuple(window), bits, group_size,
                                                                      stochastic, seed, scale_dtype)
    else:
        def run():
            residual = x_map.float() - upsample(lfc, window, x_map.shape[-2:])
            return _quantize_pack_torch(residual.view(-1), bits, group_size, stochastic, seed, scale_dtype)
    data, scale, zero = fused_op("lowpass_residual_quantize", "elementwise", run, x_map, lfc)
    if validate:
        check_finite_groups(scale, zero)
    return QuantizedTensor(data, scale, zero, bits, group_size, x_map.shape, x_map.dtype)


def lowpass_residual_dequantize(qt: QuantizedTensor, lfc: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``Upsample(lfc) + dequant(qt)`` in ``qt``'s map shape and dtype, in one pass."""
    shape = tuple(qt.shape)
    if dispatch.kernel_backend(qt.data if qt.data.is_cuda else lfc) == "triton":
        def run():
            return dispatch.triton_kernels().lowpass_residual_dequantize(qt, lfc.contiguous(), tuple(window), shape,
                                                                        qt.dtype)
    else:
        def run():
            residual = _unpack_dequantize_torch(qt, torch.float32).view(shape)
            return (upsample(lfc, window, shape[-2:]) + residual).to(qt.dtype)
    return fused_op("lowpass_residual_dequantize", "elementwise", run, qt.data, qt.scale, qt.zero, lfc)
