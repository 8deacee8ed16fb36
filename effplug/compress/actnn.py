"""ActNN (Chen et al., ICML 2021): fixed-bit per-group quantization with stochastic rounding.

Eq. (2) of the paper: ``q = floor((h - Z) / R * B + u)``, ``u ~ U[0, 1)``, with ``Z`` the group minimum,
``R`` its range and ``B = 2**b - 1``; decoding ``h_hat = q * R / B + Z`` is unbiased (Theorem 1), so the
gradient stays unbiased and its variance grows as ``R**2 / B**2``. Groups are ``group_size`` consecutive
elements in memory order (GACT's layout) rather than ActNN's per-sample rows; the docs page says why.
"""

from __future__ import annotations

import torch

from effplug.codecs import SeedStream, UniformCodec
from effplug.compress.method import CompressionMethod
from effplug.kernels.pack import QuantizedTensor

# bf16 metadata, as ActNN stores for fp32 inputs: no overflow for any finite activation range.
SCALE_DTYPE = torch.bfloat16


class ActNNMethod(CompressionMethod):
    """Every compressible saved tensor at ``config.bits``."""

    name = "actnn"
    needs_calibration = False

    def __init__(self, config):
        super().__init__(config)
        self.seeds = SeedStream(config.seed)  # one stream, drawn in the order tensors are saved
        self._codecs: dict[tuple[int, bool], UniformCodec] = {}

    def codec(self, bits: int, stochastic: bool) -> UniformCodec:
        if (bits, stochastic) not in self._codecs:
            self._codecs[bits, stochastic] = UniformCodec(bits, self.config.group_size, stochastic,
                                                          scale_dtype=SCALE_DTYPE)
        return self._codecs[bits, stochastic]

    def bits_for(self, slot: int) -> int:
        return int(self.config.bits)

    def quantize(self, x: torch.Tensor, bits: int, stochastic: bool | None = None) -> QuantizedTensor:
        stochastic = self.config.stochastic if stochastic is None else stochastic
        seed = self.seeds.draw() if stochastic else None
        # A host sync per tensor is free on CPU; on GPU the check is skipped (non-finite groups decode to NaN,
        # which propagate into the gradient as they would without compression).
        return self.codec(bits, stochastic).encode(x, seed=seed, allow_nonfinite=x.device.type != "cpu")

    def encode(self, x: torch.Tensor, slot: int):
        return self.quantize(x, self.bits_for(slot))

    def decode(self, payload) -> torch.Tensor:
        return UniformCodec.decode(payload)

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "seeds" in state or "next_seed" in state:  # "next_seed": written by effplug before SeedStream.state_dict
            self.seeds.load_state_dict(state.get("seeds", state))
