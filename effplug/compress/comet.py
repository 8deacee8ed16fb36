"""COMET-style error-bounded lossy compression of saved activations (Jin et al., 2021).

COMET stores activations with an SZ-family compressor so that every decoded element is within an error
bound ``eb``, and adapts the bound per layer from its measured effect on the gradient. SZ's error control
is linear-scaling quantization with bin width ``2 * eb`` (Di & Cappello 2016; cuSZ's "dual quantization"):

    q = round((x - z_g) / (2 * eb)),    x_hat = z_g + q * 2 * eb,    |x - x_hat| <= eb

with ``z_g`` the minimum of each group of ``group_size`` elements. The integer codes are stored at the
smallest width in {1, 2, 4, 8, 16} bits that holds the tensor's largest code (a fixed-width stand-in for
SZ's Huffman stage; the docs page says why). After encoding, the decoded tensor is checked against the bound;
a tensor that would break it (fp rounding at tiny bounds, or codes wider than 16 bits) is kept exact.

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
from effplug.kernels.pack import pack_codes, unpack_codes
from effplug.sizes import tensor_nbytes

WIDTHS = (1, 2, 4, 8, 16)
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

    def __init__(self, config):
        super().__init__(config)
        self.tightening: dict[str, int] = {}
        self.fallbacks = 0
        self.calibrations = 0

    def absolute_bound(self, x: torch.Tensor, slot: int) -> float:
        eb = self.config.error_bound
        if self.config.error_mode == "rel":
            eb *= float(x.max() - x.min())
        return eb * 2.0 ** -self.tightening.get(str(slot), 0)

    def encode(self, x: torch.Tensor, slot: int):
        eb = self.absolute_bound(x, slot)
        g = self.config.group_size
        flat = x.reshape(-1).float()
        n = flat.numel()
        groups = -(-n // g)
        padded = torch.nn.functional.pad(flat, (0, groups * g - n), value=float(flat[-1]) if n else 0.0)  # the last value keeps pad codes in range
        grouped = padded.view(groups, g)
        zero = grouped.amin(dim=1)
        step = 2.0 * eb if eb > 0 else 1.0  # eb == 0 only for a constant tensor in "rel" mode: every code is 0
        q = torch.floor((grouped - zero[:, None]) / step + 0.5)
        top = int(q.max()) if n else 0
        width = next((w for w in WIDTHS if top < 2**w), None)
        if width is None:
            return None
        payload = CometPayload(self._pack(q.view(-1), width), zero, step, width, g, x.shape, x.dtype, eb)
        if n and float((self.decode(payload).float().reshape(-1) - flat).abs().max()) > eb:
            self.fallbacks += 1
            return None
        return payload

    @staticmethod
    def _pack(q: torch.Tensor, width: int) -> torch.Tensor:
        if width == 16:
            return (q - 32768).to(torch.int16)
        return pack_codes(q, width)  # group_size >= 32 keeps the count a multiple of 8 // width

    def decode(self, p: CometPayload) -> torch.Tensor:
        if p.width == 16:
            q = p.data.to(torch.float32) + 32768
        else:
            q = unpack_codes(p.data, p.width).float()
        x = p.zero[:, None] + q.view(-1, p.group_size) * p.step
        n = math.prod(p.shape)
        return x.reshape(-1)[:n].view(p.shape).to(p.dtype)

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
