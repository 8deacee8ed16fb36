"""DIVISION (Wang et al., ICLR 2023): a precise low-frequency part plus a low-bit high-frequency residual.

For a map ``x`` of shape ``[B, C, H, W]`` (eq. 3-5 of the paper):

    LFC   = AvgPool_k(x)                      kept in bf16 (k*k times fewer values)
    HFC   = x - Upsample_k(LFC)               quantized to ``bits`` with per-group min/scale, stochastic rounding
    x_hat = Upsample_k(LFC) + dequant(HFC)

with ``k = min(lowpass_block, H)`` (and likewise for ``W``). 3-D tensors ``[B, N, C]`` are low-passed along
``N`` only (treated as ``[B, 1, N, C]`` with a ``k x 1`` window). Other tensors go to ActNN. The residual is
taken against the bf16-rounded LFC that is stored, so the LFC's rounding error is carried by the HFC. The
subtraction runs inside the quantizer's pass and the addition inside the decoder's (``kernels/lowpass.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from effplug.codecs import UniformCodec, tensor_nbytes
from effplug.compress.actnn import ActNNMethod
from effplug.kernels.pack import QuantizedTensor


@dataclass
class DivisionPayload:
    lfc: torch.Tensor  # bf16 [B, C, ceil(H/kh), ceil(W/kw)]
    hfc: QuantizedTensor
    window: tuple[int, int]
    map_shape: tuple  # the 4-D shape the map was processed in
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.lfc) + self.hfc.nbytes


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.ndim == 3 else x


class DivisionMethod(ActNNMethod):
    name = "division"

    def encode(self, x: torch.Tensor, slot: int):
        if x.ndim not in (3, 4):
            return super().encode(x, slot)
        m = _as_map(x)
        h, w = m.shape[-2:]
        block = self.config.lowpass_block
        window = (min(block, h), min(block, w) if x.ndim == 4 else 1)
        lfc = F.avg_pool2d(m.float(), window, stride=window, ceil_mode=True).to(torch.bfloat16)
        stochastic = self.config.stochastic
        seed = self.seeds.draw() if stochastic else None
        # the residual is formed inside the quantizer's pass (kernels/lowpass.py): never written out
        hfc = self.codec(self.bits_for(slot), stochastic).encode_residual(
            m, lfc, window, seed=seed, allow_nonfinite=x.device.type != "cpu")
        return DivisionPayload(lfc, hfc, window, tuple(m.shape), x.shape, x.dtype)

    def decode(self, p) -> torch.Tensor:
        if not isinstance(p, DivisionPayload):
            return super().decode(p)
        return UniformCodec.decode_residual(p.hfc, p.lfc, p.window).reshape(p.shape)


def division_nbytes(shape, bits: int, group_size: int, block: int) -> int:
    """Analytic bytes of one DIVISION payload (bf16 LFC + packed HFC with bf16 min/scale per group)."""
    m = list(shape) if len(shape) == 4 else [shape[0], 1, shape[1], shape[2]]
    kh = min(block, m[2])
    kw = min(block, m[3]) if len(shape) == 4 else 1
    lfc = m[0] * m[1] * math.ceil(m[2] / kh) * math.ceil(m[3] / kw) * 2
    return lfc + UniformCodec(bits, group_size, scale_dtype=torch.bfloat16).nbytes_for(math.prod(shape))
