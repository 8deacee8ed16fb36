"""``AffineCodec``: per-channel quantization with a range the caller keeps (Mesa's running ``shift``/``clip``)."""

from __future__ import annotations

import torch

from effplug.codecs.seeds import SeedStream
from effplug.kernels import affine as _affine
from effplug.kernels.affine import AffineCodes


class AffineCodec:
    """``encode(x, low=, step=, axis=)`` draws from its seed stream when ``stochastic``."""

    def __init__(self, bits: int, stochastic: bool = True, seed: int | SeedStream | None = None):
        self.bits, self.stochastic = bits, stochastic
        self.seeds = seed if isinstance(seed, SeedStream) else SeedStream(seed)

    def encode(self, tensor: torch.Tensor, key: str | None = None, *, low: torch.Tensor, step: torch.Tensor,
               axis: int) -> AffineCodes:
        seed = self.seeds.draw() if self.stochastic else None
        return _affine.quantize_affine(tensor, low, step, axis, self.bits, self.stochastic, seed)

    @staticmethod
    def decode(payload: AffineCodes) -> torch.Tensor:
        return _affine.dequantize_affine(payload)

    def nbytes(self, payload: AffineCodes) -> int:
        return payload.nbytes

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state["seeds"])
