"""AC-SGD activation compression between pipeline stages (Wang et al., NeurIPS 2022, arXiv 2206.01299).

Both ends of a stage boundary keep a cache m[ξ] per training sample ξ. For a sample seen before, the sender
transmits Q(a - m[ξ]) at ``bits`` (2-4) and both ends set m[ξ] <- m[ξ] + Q(a - m[ξ]) (the paper's Alg. 1,
"compress the change of the activation of the same sample"); a sample seen for the first time is sent
exact and becomes its cache (the paper's warm-up). Gradients going back are quantized directly at
``grad_bits`` (8). Q is effplug's per-group stochastic quantizer (``kernels.quantize_pack``), so the
codec's bytes are exact: ``packed_nbytes(numel, bits, group)`` plus 8 bytes per sample id.

Framework-free: ``encode``/``decode`` on plain tensors; a pipeline runtime sends the payload's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.codecs import SeedStream
from effplug.kernels import quant as _quant


@dataclass
class ActivationPayload:
    sample_ids: torch.Tensor  # int64, one per row
    exact: torch.Tensor | None  # first sight: the activation itself
    delta: _quant.QuantizedTensor | None  # otherwise: the quantized change against the cache

    @property
    def nbytes(self) -> int:
        body = self.exact.numel() * self.exact.element_size() if self.exact is not None else self.delta.nbytes
        return body + self.sample_ids.numel() * 8


class ACSGDCodec:
    """One end of a stage boundary. Sender and receiver each hold one; their caches stay identical."""

    def __init__(self, bits: int = 4, grad_bits: int = 8, group_size: int = 128, seed: int | None = 0):
        if bits not in (2, 4) and bits != 8:
            raise ValueError(f"bits={bits!r}: AC-SGD sends activation changes at 2 or 4 bits (8 also works)")
        _quant.validate_quant_args(grad_bits, group_size)
        self.bits, self.grad_bits, self.group_size = bits, grad_bits, group_size
        self.cache: dict[int, torch.Tensor] = {}
        self._seeds = SeedStream(seed)

    def _check_ids(self, sample_ids: torch.Tensor, rows: int) -> list[int]:
        ids = [int(i) for i in sample_ids.reshape(-1).tolist()]
        if len(ids) != rows:
            raise ValueError(f"AC-SGD needs one sample id per row: {len(ids)} ids for {rows} rows")
        return ids

    def encode(self, activation: torch.Tensor, sample_ids: torch.Tensor) -> ActivationPayload:
        """Sender side: the payload for ``activation`` (rows = samples), and the sender's cache update."""
        ids = self._check_ids(sample_ids, activation.shape[0])
        ids_tensor = torch.as_tensor(ids, dtype=torch.int64)
        if not all(i in self.cache for i in ids):  # warm-up: first sight of (some of) these samples
            payload = ActivationPayload(ids_tensor, activation.detach().clone(), None)
        else:
            delta = activation.detach() - self._cached(ids, activation)
            payload = ActivationPayload(ids_tensor, None, _quant.quantize_pack(
                delta, self.bits, self.group_size, True, self._seeds.draw()))
        self._apply(payload, activation)
        return payload

    def decode(self, payload: ActivationPayload, like: torch.Tensor | None = None) -> torch.Tensor:
        """Receiver side: the reconstructed activation m[ξ] after the update (equal to the sender's cache)."""
        return self._apply(payload, like)

    def _cached(self, ids: list[int], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.cache[i] for i in ids]).to(device=like.device, dtype=like.dtype)

    def _apply(self, payload: ActivationPayload, like: torch.Tensor | None) -> torch.Tensor:
        ids = payload.sample_ids.tolist()
        if payload.exact is not None:
            new = payload.exact
        else:
            reference = like if like is not None else next(iter(self.cache.values()))
            new = self._cached(ids, reference) + _quant.unpack_dequantize(payload.delta).to(reference.dtype)
        for row, sample in enumerate(ids):
            self.cache[sample] = new[row].detach().clone()
        return new

    def encode_gradient(self, grad: torch.Tensor) -> _quant.QuantizedTensor:
        """Backward: the gradient quantized directly at ``grad_bits`` (no cache)."""
        return _quant.quantize_pack(grad.detach(), self.grad_bits, self.group_size, True, self._seeds.draw())

    @staticmethod
    def decode_gradient(payload: _quant.QuantizedTensor) -> torch.Tensor:
        return _quant.unpack_dequantize(payload)

    def activation_nbytes(self, rows: int, row_numel: int, exact_dtype: torch.dtype = torch.float32,
                          first_sight: bool = False) -> int:
        """The formula: bytes of one boundary message (what ``payload.nbytes`` must equal)."""
        if first_sight:
            return rows * row_numel * torch.tensor([], dtype=exact_dtype).element_size() + 8 * rows
        return _quant.packed_nbytes(rows * row_numel, self.bits, self.group_size) + 8 * rows

    def state_dict(self) -> dict:
        return {"cache": {str(k): v.clone() for k, v in self.cache.items()}, "next_seed": self._seeds.next_seed}

    def load_state_dict(self, state: dict) -> None:
        self.cache = {int(k): v.clone() for k, v in state["cache"].items()}
        self._seeds = SeedStream(int(state["next_seed"]))
