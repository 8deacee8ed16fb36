"""COMET-style error-bounded lossy compression of saved activations (Jin et al., 2021).

COMET stores activations with an SZ-family compressor so that every decoded element is within an error
bound ``eb``, and adapts the bound per layer from its measured effect on the gradient. SZ's error control
is linear-scaling quantization with bin width ``2 * eb`` (Di & Cappello 2016; cuSZ's "dual quantization"):

    q = round((x - z_g) / (2 * eb)),    x_hat = z_g + q * 2 * eb,    |x - x_hat| <= eb

with ``z_g`` the minimum of each group of ``group_size`` elements. The integer codes are stored at the
smallest width in {1, 2, 4, 8, 16} bits that holds the tensor's largest code (a fixed-width stand-in for
SZ's Huffman stage; the docs page says why). One fused pass (``kernels.error_bounded``) gives each group's
minimum, largest code and largest decode error; a tensor that would break the bound (fp rounding at tiny
bounds, codes wider than 16 bits, inf/NaN) is kept exact; a second pass writes the codes.

Adaptive bound (after COMET Sec. 4): tensor ``l`` uses ``eb_l = eb * 2**-k_l``. At each calibration its
relative gradient error ``||g_l - g|| / ||g||`` (only tensor ``l`` compressed) is measured; ``k_l`` rises
when it exceeds ``grad_tolerance`` and falls (never below 0, so the user's bound always holds) when it is
under a quarter of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from effplug.compress.method import CompressionMethod
from effplug.kernels.channel_stats import channel_min_max
from effplug.kernels.error_bounded import (
    WIDTHS,
    code_width,
    error_bounded_decode,
    error_bounded_pack,
    error_bounded_stats,
)
from effplug.sizes import tensor_nbytes

__all__ = ["WIDTHS", "CometMethod", "CometPayload"]
MAX_TIGHTENING = 16


@dataclass
class CometPayload:
    data: torch.Tensor  # packed codes (uint8) or int16 codes offset by -32768
    zero: torch.Tensor  # fp32 per group
    step: float  # 2 * eb_l
    width: int
    group_size: int
    shape: torch.Size
    dtype: torch.dtype
    error_bound: float

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.data) + tensor_nbytes(self.zero)


class CometMethod(CompressionMethod):
    name = "comet"
    needs_calibration = True
    adapts_per_tensor = True  # each tensor's bound moves on its own measurement

    def __init__(self, config):
        super().__init__(config)
        self.tightening: dict[str, int] = {}
        self.fallbacks = 0
        self.calibrations = 0

    def absolute_bound(self, x: torch.Tensor, slot: int) -> float:
        eb = self.config.error_bound
        if self.config.error_mode == "rel":
            lo, hi = channel_min_max(x.reshape(1, -1), 0)  # one read; a host sync, as the bound is a scalar
            eb *= float(hi - lo)
        return eb * 2.0 ** -self.tightening.get(str(slot), 0)

    def encode(self, x: torch.Tensor, slot: int):
        eb = self.absolute_bound(x, slot)
        g = self.config.group_size
        step = 2.0 * eb if eb > 0 else 1.0  # eb == 0 only for a constant tensor in "rel" mode: every code is 0
        zero, top, err = error_bounded_stats(x, step, g)  # one read: the width and the bound check
        top, worst = torch.stack([top.amax(), err.amax()]).tolist()  # one host sync for both
        width = code_width(top)
        if width is None or not worst <= eb:  # codes wider than 16 bits, fp rounding at a tiny bound, inf/NaN
            self.fallbacks += 1
            self.decline_reason = "comet keeps a tensor exact when its codes would break the error bound"
            return None
        data = error_bounded_pack(x, zero, step, g, width)  # group_size >= 32: whole bytes per group
        return CometPayload(data, zero, step, width, g, x.shape, x.dtype, eb)

    def decode(self, p: CometPayload) -> torch.Tensor:
        return error_bounded_decode(p.data, p.zero, p.step, p.group_size, p.width, p.shape, p.dtype)

    def calibrate(self, measurements) -> None:
        tol = self.config.grad_tolerance
        for m in measurements:
            key = str(m.slot)
            rel = math.sqrt(m.sq_error / m.ref_sq_norm) if m.ref_sq_norm > 0 else 0.0
            k = self.tightening.get(key, 0)
            if rel > tol and k < MAX_TIGHTENING:
                k += 1
            elif rel < tol / 4 and k > 0:
                k -= 1
            self.tightening[key] = k
        self.calibrations += 1

    def state_dict(self) -> dict:
        return {"tightening": dict(self.tightening), "fallbacks": self.fallbacks, "calibrations": self.calibrations}

    def load_state_dict(self, state: dict) -> None:
        self.tightening = {str(k): int(v) for k, v in state["tightening"].items()}
        self.fallbacks = int(state["fallbacks"])
        self.calibrations = int(state["calibrations"])
