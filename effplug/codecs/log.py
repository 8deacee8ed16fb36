"""``LogCodec``: LUQ's logarithmic unbiased format (Chmiel et al., ICLR 2023, Sec. 4, eqs. 9-11): 1 sign bit and
``bits - 1`` exponent bits over ``alpha * 2**k``, with stochastic underflow and rounding, ``E[x_hat] = x``.

LUQ computes the backward pass with the quantized neural gradient at once and stores nothing, so the codec's
door is :meth:`roundtrip` (the values a 4-bit payload decodes to); :meth:`nbytes_for` is what the payload
would hold (codes plus one fp32 ``alpha``).
"""

from __future__ import annotations

import torch

from effplug.kernels import pow2 as _pow2


class LogCodec:
    def __init__(self, bits: int = 4):
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits={bits!r} is not supported for the log format; use an int from 2 to 8")
        self.bits = bits

    def roundtrip(self, tensor: torch.Tensor, seed: int) -> torch.Tensor:
        """``decode(encode(tensor))`` with draws from ``seed``, in ``tensor``'s dtype."""
        return _pow2.log_quantize(tensor, self.bits, seed=seed)

    def nbytes_for(self, numel: int) -> int:
        return -(-numel * self.bits // 8) + 4

    def __repr__(self) -> str:
        return f"LogCodec(bits={self.bits})"
