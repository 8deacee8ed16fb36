"""``Pow2Codec``: natural compression (Horváth et al. 2022, eq. 3), unbiased rounding to ``±2**e``, sent as one
sign+exponent byte per element plus a 4-byte base exponent."""

from __future__ import annotations

import torch

from effplug.codecs.base import KeyedSeeds
from effplug.kernels import pow2 as _pow2
from effplug.kernels.pow2 import Pow2Codes


class Pow2Codec:
    def __init__(self, seed: int | None = None, scope: str = ""):
        self.seeds = KeyedSeeds(seed, scope)

    def encode(self, tensor: torch.Tensor, key: str | None = None) -> Pow2Codes:
        return _pow2.pow2_encode(tensor, seed=self.seeds.draw(key))

    def encode_many(self, tensors: list[torch.Tensor], keys: list[str]) -> list[Pow2Codes]:
        """``[encode(t, k) ...]`` bit for bit, in one Philox pass on the torch path."""
        return _pow2.pow2_encode_many(tensors, [self.seeds.draw(k) for k in keys])

    def decode(self, payload: Pow2Codes) -> torch.Tensor:
        return _pow2.pow2_decode(payload)

    def nbytes(self, payload: Pow2Codes) -> int:
        return payload.nbytes

    @staticmethod
    def to_bytes(payload: Pow2Codes, parts: int = 1) -> list[torch.Tensor]:
        """``parts`` equal slices of the codes, each followed by the base exponent so it decodes on its own."""
        base = torch.tensor([payload.lo_exp], dtype=torch.int32, device=payload.codes.device).view(torch.uint8)
        return list(torch.cat([payload.codes.reshape(parts, -1), base.expand(parts, 4)], dim=1).unbind(0))

    @staticmethod
    def from_bytes(buffer: torch.Tensor, numel: int, dtype: torch.dtype) -> Pow2Codes:
        lo_exp = int(buffer[numel:numel + 4].clone().view(torch.int32).item())  # clone: odd byte offsets
        return Pow2Codes(buffer[:numel], lo_exp, dtype)

    @staticmethod
    def wire_nbytes(numel: int) -> int:
        return numel + 4

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state["seeds"])

    def __repr__(self) -> str:
        return "Pow2Codec()"
