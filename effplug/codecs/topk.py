"""``TopKCodec``: top-k sparsification with error feedback (Stich et al. 2018, Alg. 1; Lin et al. 2018, DGC).

``e_new = (g + e_old) - decode(sent)`` per stream, so ``decode(sent) + e_new == g + e_old`` exactly. A stream is
named by a key (a parameter name), never by a bucket index: residuals survive DDP rebuilding its buckets and a
resume. ``encode_segments`` selects over several named tensors laid end to end (a DDP bucket) and keeps one
residual per name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from effplug.codecs.base import tensor_nbytes
from effplug.kernels import topk as _topk
from effplug.logs import log_once

log = logging.getLogger("effplug.codecs")


@dataclass
class SparsePayload:
    """Top-k values with int32 flat indices (int64 above 2**31 elements)."""

    values: torch.Tensor
    indices: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.values) + tensor_nbytes(self.indices)


class TopKCodec:
    def __init__(self, ratio: float = 0.01, error_feedback: bool = True):
        _topk.validate_ratio(ratio)
        self.ratio, self.error_feedback = float(ratio), error_feedback
        self.residuals: dict[str, torch.Tensor] = {}

    def encode(self, tensor: torch.Tensor, key: str = "default") -> SparsePayload:
        if not isinstance(key, str):
            raise ValueError(f"key must be a str naming the stream (it is saved in state_dict); got {key!r}")
        old = self.residuals.get(key)
        if self.error_feedback and old is not None and (old.numel() != tensor.numel() or old.dtype != tensor.dtype):
            raise ValueError(f"TopKCodec stream {key!r} changed shape/dtype {tuple(old.shape)} {old.dtype} -> "
                             f"{tuple(tensor.shape)} {tensor.dtype}; use a different key per tensor")
        payload = self.encode_segments(tensor.reshape(-1), [(key, tensor.numel())])
        payload.shape = tensor.shape
        if self.error_feedback:
            self.residuals[key] = self.residuals[key].view(tensor.shape)
        return payload

    def encode_segments(self, flat: torch.Tensor, segments: list[tuple[str, int]]) -> SparsePayload:
        """Select the top ``ratio`` of ``flat + residuals`` where ``flat`` is the named segments end to end."""
        accumulated = flat
        if self.error_feedback and any(key in self.residuals for key, _ in segments):
            parts = []
            for key, numel in segments:
                r = self.residuals.get(key)
                if r is not None and r.numel() != numel:
                    log_once(log, f"topk-residual-size:{key}",
                             "effplug top-k: the residual of %r has %d elements, the tensor %d; it restarts at "
                             "zero (the model changed since the residual was saved)", key, r.numel(), numel)
                    r = None
                parts.append(r.reshape(-1).to(flat) if r is not None else flat.new_zeros(numel))
            accumulated = flat + torch.cat(parts)
        values, indices = _topk.topk_select(accumulated, self.ratio)
        if self.error_feedback:
            remainder = accumulated.detach().clone()
            remainder[indices] = 0
            offset = 0
            for key, numel in segments:  # views of one buffer: no copy per parameter
                self.residuals[key] = remainder[offset:offset + numel]
                offset += numel
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        return SparsePayload(values, indices.to(index_dtype), torch.Size([flat.numel()]), flat.dtype)

    def decode(self, payload: SparsePayload) -> torch.Tensor:
        dense = torch.zeros(payload.shape, dtype=payload.dtype, device=payload.values.device).reshape(-1)
        dense[payload.indices.long()] = payload.values
        return dense.view(payload.shape)

    def nbytes(self, payload: SparsePayload) -> int:
        return payload.nbytes

    def state_dict(self) -> dict:
        return {"residuals": {k: v.detach().cpu().clone() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.residuals = {k: v.clone() for k, v in state.get("residuals", {}).items()}

    def __repr__(self) -> str:
        return f"TopKCodec(ratio={self.ratio}, error_feedback={self.error_feedback})"
