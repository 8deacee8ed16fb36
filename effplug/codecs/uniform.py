"""``UniformCodec``: ``bits``-bit per-group min/scale quantization (ActNN, Chen et al. 2021, eq. 2), and its
wire layout: the codes, then the scales, then the zeros, as one uint8 buffer."""

from __future__ import annotations

import torch

from effplug.codecs.base import KeyedSeeds
from effplug.kernels import pack as _pack
from effplug.kernels.lowpass import lowpass_residual_dequantize, lowpass_residual_quantize
from effplug.kernels.pack import QuantizedTensor


class UniformCodec:
    """``encode(t, key)`` quantizes in groups of ``group_size`` (nearest or stochastic rounding, drawing from
    the seed stream of ``key``); ``to_bytes``/``from_bytes`` are the wire form that CGX and AC-SGD send."""

    def __init__(self, bits: int = 4, group_size: int = 128, stochastic: bool = True, seed: int | None = None,
                 scale_dtype: torch.dtype = torch.float16, group_name: str = "group_size", scope: str = ""):
        _pack.validate_quant_args(bits, group_size, scale_dtype, group_name=group_name)
        self.bits, self.group_size, self.stochastic, self.scale_dtype = bits, group_size, stochastic, scale_dtype
        self.seeds = KeyedSeeds(seed, scope)

    def encode(self, tensor: torch.Tensor, key: str | None = None, *, seed: int | None = None,
               allow_nonfinite: bool = False) -> QuantizedTensor:
        """``seed`` overrides the stream (a caller that draws from a stream of its own). ``allow_nonfinite``:
        a group holding inf/NaN decodes to NaN instead of raising (a gradient on its way to a GradScaler)."""
        if self.stochastic and seed is None:
            seed = self.seeds.draw(key)
        return _pack.quantize_pack(tensor, self.bits, self.group_size, self.stochastic,
                                    seed if self.stochastic else None, self.scale_dtype,
                                    validate=not allow_nonfinite)

    @staticmethod
    def decode(payload: QuantizedTensor) -> torch.Tensor:
        """The payload carries its bits and groups: no codec state is needed."""
        return _pack.unpack_dequantize(payload)

    def encode_residual(self, tensor: torch.Tensor, lowpass: torch.Tensor, window: tuple[int, int],
                        key: str | None = None, *, seed: int | None = None,
                        allow_nonfinite: bool = False) -> QuantizedTensor:
        """``encode(tensor - Upsample(lowpass))`` for a map ``[B, C, H, W]`` in one pass (DIVISION's HFC)."""
        if self.stochastic and seed is None:
            seed = self.seeds.draw(key)
        return lowpass_residual_quantize(tensor, lowpass, window, self.bits, self.group_size, self.stochastic,
                                         seed if self.stochastic else None, self.scale_dtype,
                                         validate=not allow_nonfinite)

    @staticmethod
    def decode_residual(payload: QuantizedTensor, lowpass: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        return lowpass_residual_dequantize(payload, lowpass, window)

    def nbytes(self, payload: QuantizedTensor) -> int:
        return payload.nbytes

    def nbytes_for(self, numel: int) -> int:
        """What ``encode`` holds for ``numel`` elements, without encoding."""
        return _pack.packed_nbytes(numel, self.bits, self.group_size, self.scale_dtype)

    # -- the wire ---------------------------------------------------------------------------------------

    @staticmethod
    def to_bytes(payload: QuantizedTensor) -> torch.Tensor:
        return torch.cat([payload.data, payload.scale.view(torch.uint8), payload.zero.view(torch.uint8)])

    def from_bytes(self, buffer: torch.Tensor, shape, dtype: torch.dtype) -> QuantizedTensor:
        numel = 1
        for d in shape:
            numel *= d
        groups = -(-numel // self.group_size)
        code_bytes = groups * self.group_size * self.bits // 8
        size = torch.empty((), dtype=self.scale_dtype).element_size() * groups
        # clone: a received slice may start at an odd byte offset, which a 16-bit view refuses
        scale = buffer[code_bytes:code_bytes + size].clone().view(self.scale_dtype)
        zero = buffer[code_bytes + size:code_bytes + 2 * size].clone().view(self.scale_dtype)
        return QuantizedTensor(buffer[:code_bytes], scale, zero, self.bits, self.group_size, torch.Size(shape), dtype)

    def split(self, payload: QuantizedTensor, parts: int) -> list[QuantizedTensor]:
        """``parts`` payloads of equal whole groups (a reduce-scatter's chunks); the numel must divide."""
        numel = payload.numel
        if numel % (parts * self.group_size):
            raise ValueError(f"{numel} elements do not split into {parts} parts of whole {self.group_size}-groups")
        each = numel // parts
        data, scale, zero = payload.data.view(parts, -1), payload.scale.view(parts, -1), payload.zero.view(parts, -1)
        return [QuantizedTensor(data[i], scale[i], zero[i], self.bits, self.group_size, torch.Size([each]),
                                payload.dtype) for i in range(parts)]

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state["seeds"])

    def __repr__(self) -> str:
        return f"UniformCodec(bits={self.bits}, group_size={self.group_size}, stochastic={self.stochastic})"
