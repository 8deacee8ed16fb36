"""Codecs: the one encode/decode layer every technique uses to move a tensor in fewer bits.

A codec turns a tensor into a payload and back; ``nbytes(payload)`` is the exact number of bytes the
payload holds (what would be stored or sent). All formulas live in ``effplug.kernels``; codecs only
add per-stream state such as seeds and error-feedback residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from effplug.kernels import pow2 as _pow2
from effplug.kernels import quant as _quant
from effplug.kernels import topk as _topk
from effplug.kernels.philox import resolve_seed


@runtime_checkable
class Codec(Protocol):
    def encode(self, tensor: torch.Tensor) -> Any: ...

    def decode(self, payload: Any) -> torch.Tensor: ...

    def nbytes(self, payload: Any) -> int: ...


class SeedStream:
    """Deterministic per-codec seeds: ``seed, seed+1, ...`` so runs reproduce and no global RNG is used."""

    def __init__(self, seed: int | None):
        self.next_seed = resolve_seed(seed)

    def draw(self) -> int:
        seed = self.next_seed
        self.next_seed = (self.next_seed + 1) % (2**63)
        return seed


class UniformCodec:
    """``bits``-bit per-group min/scale quantization (ActNN layout), nearest or stochastic rounding."""

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 128,
        stochastic: bool = True,
        seed: int | None = None,
        scale_dtype: torch.dtype = torch.float16,
    ):
        _quant.validate_quant_args(bits, group_size, scale_dtype)
        self.bits, self.group_size, self.stochastic, self.scale_dtype = bits, group_size, stochastic, scale_dtype
        self._seeds = SeedStream(seed)

    def encode(self, tensor: torch.Tensor) -> _quant.QuantizedTensor:
        seed = self._seeds.draw() if self.stochastic else None
        return _quant.quantize_pack(tensor, self.bits, self.group_size, self.stochastic, seed, self.scale_dtype)

    def decode(self, payload: _quant.QuantizedTensor) -> torch.Tensor:
        return _quant.unpack_dequantize(payload)

    def nbytes(self, payload: _quant.QuantizedTensor) -> int:
        return payload.nbytes

    def __repr__(self) -> str:
        return f"UniformCodec(bits={self.bits}, group_size={self.group_size}, stochastic={self.stochastic})"


class Pow2Codec:
    """Natural compression (Horvath et al. 2022): unbiased rounding to ``±2**e``, sent as 8-bit codes."""

    def __init__(self, seed: int | None = None):
        self._seeds = SeedStream(seed)

    def encode(self, tensor: torch.Tensor) -> _pow2.Pow2Codes:
        return _pow2.pow2_encode(tensor, seed=self._seeds.draw())

    def decode(self, payload: _pow2.Pow2Codes) -> torch.Tensor:
        return _pow2.pow2_decode(payload)

    def nbytes(self, payload: _pow2.Pow2Codes) -> int:
        return payload.nbytes

    def __repr__(self) -> str:
        return "Pow2Codec()"


@dataclass
class SparsePayload:
    """Top-k values with int32 flat indices (int64 above 2**31 elements)."""

    values: torch.Tensor
    indices: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.indices.numel() * self.indices.element_size()


class TopKCodec:
    """Top-k sparsification with error feedback (Stich et al. 2018; Lin et al. 2018, DGC).

    ``encode(g, key)`` selects from ``g + residual[key]`` and keeps what was not sent as the new residual,
    so ``decode(payload) + residual[key] == g + old_residual`` exactly. ``key`` names the stream (a
    bucket or parameter); residuals are plain tensors in ``state_dict()``.
    """

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True):
        _topk.validate_ratio(ratio)
        self.ratio, self.error_feedback = ratio, error_feedback
        self.residuals: dict[str, torch.Tensor] = {}

    def encode(self, tensor: torch.Tensor, key: str = "default") -> SparsePayload:
        if not isinstance(key, str):
            raise ValueError(f"key must be a str naming the stream (it is saved in state_dict); got {key!r}")
        accumulated = tensor
        if self.error_feedback and key in self.residuals:
            residual = self.residuals[key]
            if residual.shape != tensor.shape or residual.dtype != tensor.dtype:
                raise ValueError(
                    f"TopKCodec stream {key!r} changed shape/dtype {tuple(residual.shape)} {residual.dtype} -> "
                    f"{tuple(tensor.shape)} {tensor.dtype}; use a different key per tensor"
                )
            accumulated = tensor + residual
        values, indices = _topk.topk_select(accumulated, self.ratio)
        if self.error_feedback:
            residual = accumulated.detach().clone().reshape(-1)
            residual[indices] = 0
            self.residuals[key] = residual.view(tensor.shape)
        index_dtype = torch.int32 if tensor.numel() < 2**31 else torch.int64
        return SparsePayload(values, indices.to(index_dtype), tensor.shape, tensor.dtype)

    def decode(self, payload: SparsePayload) -> torch.Tensor:
        dense = torch.zeros(payload.shape, dtype=payload.dtype, device=payload.values.device).reshape(-1)
        dense[payload.indices.long()] = payload.values
        return dense.view(payload.shape)

    def nbytes(self, payload: SparsePayload) -> int:
        return payload.nbytes

    def state_dict(self) -> dict:
        return {"residuals": {k: v.clone() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.residuals = {k: v.clone() for k, v in state["residuals"].items()}

    def __repr__(self) -> str:
        return f"TopKCodec(ratio={self.ratio}, error_feedback={self.error_feedback})"
