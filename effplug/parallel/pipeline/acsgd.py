"""AC-SGD activation compression between pipeline stages (Wang et al., NeurIPS 2022, arXiv 2206.01299).

Both ends of a stage boundary keep a cache m[ξ] per training sample ξ. For a sample seen before, the sender
transmits Q(a - m[ξ]) at ``bits`` (2-4) and both ends set m[ξ] <- m[ξ] + Q(a - m[ξ]) (the paper's Alg. 1,
"compress the change of the activation of the same sample"); a sample seen for the first time is sent
exact and becomes its cache (the paper's warm-up). Gradients going back are quantized directly at
``grad_bits`` (8). Q is effplug's per-group stochastic quantizer (``kernels.quantize_pack``, bf16 scale
and zero per group), so the codec's bytes are exact: ``packed_nbytes(numel, bits, group)``.

Framework-free: ``encode``/``decode`` on plain tensors (a payload object, plus 8 bytes per sample id), and
``encode_bytes``/``decode_bytes`` (one flat uint8 tensor, for a transport that knows the sample ids at both
ends, as the pipeline does: every stage sees the batch). ``effplug.parallel.pipeline.acsgd_stage`` puts the codec on
``torch.distributed.pipelining``'s wire.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from effplug.codecs import SeedStream, UniformCodec
from effplug.kernels.pack import QuantizedTensor
from effplug.sizes import tensor_nbytes

SCALE_DTYPE = torch.bfloat16  # 8-bit exponent: tiny gradients and large activation changes keep a finite scale


@dataclass(frozen=True)
class ACSGDConfig:
    """``ACSGDConfig(bits=4, grad_bits=8, group_size=128, seed=0)``: the pipeline strategies' ``acsgd=`` switch."""

    bits: int = 4
    grad_bits: int = 8
    group_size: int = 128
    seed: int = 0

    def __post_init__(self):
        ACSGDCodec(self.bits, self.grad_bits, self.group_size, self.seed)  # validates

    def as_dict(self) -> dict:
        return asdict(self)


def row_sample_ids(rows: torch.Tensor) -> torch.Tensor:
    """A stable int64 id per row (blake2b of its bytes): the same sample gets the same id in every process."""
    flat = rows.detach().reshape(rows.shape[0], -1).cpu().contiguous()
    ids = [int.from_bytes(hashlib.blake2b(r.numpy().tobytes(), digest_size=8).digest(), "little", signed=True)
           for r in flat]
    return torch.tensor(ids, dtype=torch.int64)


def batch_sample_ids(batch) -> torch.Tensor:
    """One stable id per row of ``(inputs, targets[, ids])``: the third element if it holds one integer per
    row, else ``row_sample_ids(inputs)``."""
    inputs = batch[0]
    if len(batch) > 2 and torch.is_tensor(batch[2]) and not batch[2].is_floating_point() \
            and batch[2].reshape(-1).numel() == inputs.shape[0]:
        return batch[2].reshape(-1).to(torch.int64).cpu()
    return row_sample_ids(inputs)


def activation_wire_nbytes(numel: int, bits: int, group_size: int) -> int:
    """Bytes of one compressed activation message (codes, then the scales, then the zeros)."""
    return UniformCodec(bits, group_size, scale_dtype=SCALE_DTYPE).nbytes_for(numel)


def gradient_wire_nbytes(numel: int, grad_bits: int, group_size: int) -> int:
    """Bytes of one gradient message: the packed gradient, padded to whole fp32 words (it travels as fp32)."""
    return -(-UniformCodec(grad_bits, group_size, scale_dtype=SCALE_DTYPE).nbytes_for(numel) // 4) * 4


@dataclass
class ActivationPayload:
    sample_ids: torch.Tensor  # int64, one per row
    exact: torch.Tensor | None  # first sight: the activation itself
    delta: QuantizedTensor | None  # otherwise: the quantized change against the cache

    @property
    def nbytes(self) -> int:
        body = tensor_nbytes(self.exact) if self.exact is not None else self.delta.nbytes
        return body + self.sample_ids.numel() * 8


class ACSGDCodec:
    """One end of a stage boundary. Sender and receiver each hold one; their caches stay identical."""

    def __init__(self, bits: int = 4, grad_bits: int = 8, group_size: int = 128,
                 seed: int | SeedStream | None = 0):
        if bits not in (2, 4, 8):
            raise ValueError(f"bits={bits!r}: AC-SGD sends activation changes at 2 or 4 bits (8 also works)")
        self.bits, self.grad_bits, self.group_size = bits, grad_bits, group_size
        # one stream for both directions, drawn in message order (a stage boundary passes its own spawn)
        self.seeds = seed if isinstance(seed, SeedStream) else SeedStream(seed)
        self.activation_codec = UniformCodec(bits, group_size, stochastic=True, scale_dtype=SCALE_DTYPE)
        self.gradient_codec = UniformCodec(grad_bits, group_size, stochastic=True, scale_dtype=SCALE_DTYPE)
        self.cache: dict[int, torch.Tensor] = {}

    def _check_ids(self, sample_ids: torch.Tensor, rows: int) -> list[int]:
        ids = [int(i) for i in sample_ids.reshape(-1).tolist()]
        if len(ids) != rows:
            raise ValueError(f"AC-SGD needs one sample id per row: {len(ids)} ids for {rows} rows")
        return ids

    # -- payload objects (ids travel with the message) ------------------------------------------------

    def encode(self, activation: torch.Tensor, sample_ids: torch.Tensor) -> ActivationPayload:
        """Sender side: the payload for ``activation`` (rows = samples), and the sender's cache update."""
        ids = self._check_ids(sample_ids, activation.shape[0])
        ids_tensor = torch.as_tensor(ids, dtype=torch.int64)
        if not all(i in self.cache for i in ids):  # warm-up: first sight of (some of) these samples
            payload = ActivationPayload(ids_tensor, activation.detach().clone(), None)
        else:
            payload = ActivationPayload(ids_tensor, None, self._quantize_change(activation, ids))
        self._apply(payload, activation)
        return payload

    def decode(self, payload: ActivationPayload, like: torch.Tensor | None = None) -> torch.Tensor:
        """Receiver side: the reconstructed activation m[ξ] after the update (equal to the sender's cache)."""
        return self._apply(payload, like)

    # -- flat bytes (ids known at both ends) --------------------------------------------------------------

    def remember(self, activation: torch.Tensor, sample_ids: torch.Tensor) -> None:
        """Warm-up at either end: ``activation`` went exact and becomes the rows' cache."""
        ids = self._check_ids(sample_ids, activation.shape[0])
        for row, sample in enumerate(ids):
            self.cache[sample] = activation[row].detach().clone()

    def encode_bytes(self, activation: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
        """Sender: Q(a - m) as ``activation_wire_nbytes`` uint8; the cache moves to m + Q(a - m)."""
        ids = self._check_ids(sample_ids, activation.shape[0])
        missing = [i for i in ids if i not in self.cache]
        if missing:
            raise ValueError(f"{len(missing)} samples have no cache yet; send them exact first (remember())")
        qt = self._quantize_change(activation, ids)
        self._update(ids, activation, qt)
        return self.activation_codec.to_bytes(qt)

    def decode_bytes(self, buffer: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
        """Receiver: m + Q(a - m) from ``encode_bytes``'s message; the cache moves to it."""
        ids = [int(i) for i in sample_ids.reshape(-1).tolist()]
        like = self.cache[ids[0]]
        qt = self.activation_codec.from_bytes(buffer, (len(ids), *like.shape), like.dtype)
        return self._update(ids, like, qt)

    def encode_gradient_bytes(self, grad: torch.Tensor) -> torch.Tensor:
        """Backward: the gradient at ``grad_bits`` as ``gradient_wire_nbytes`` uint8 (zero padded)."""
        data = self.gradient_codec.to_bytes(self.encode_gradient(grad))
        pad = gradient_wire_nbytes(grad.numel(), self.grad_bits, self.group_size) - data.numel()
        return torch.cat([data, data.new_zeros(pad)])

    def decode_gradient_bytes(self, buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.gradient_codec.decode(self.gradient_codec.from_bytes(buffer, like.shape, like.dtype))

    # -- internals ---------------------------------------------------------------------------------------

    def _quantize_change(self, activation: torch.Tensor, ids: list[int]) -> QuantizedTensor:
        delta = activation.detach() - self._cached(ids, activation)
        return self.activation_codec.encode(delta, seed=self.seeds.draw())

    def _cached(self, ids: list[int], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.cache[i] for i in ids]).to(device=like.device, dtype=like.dtype)

    def _update(self, ids: list[int], like: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
        new = self._cached(ids, like) + self.activation_codec.decode(qt).to(like.dtype)
        for row, sample in enumerate(ids):
            self.cache[sample] = new[row].clone()
        return new

    def _apply(self, payload: ActivationPayload, like: torch.Tensor | None) -> torch.Tensor:
        ids = payload.sample_ids.tolist()
        if payload.exact is not None:
            self.remember(payload.exact, payload.sample_ids)
            return payload.exact
        reference = like if like is not None else next(iter(self.cache.values()))
        return self._update(ids, reference, payload.delta)

    def encode_gradient(self, grad: torch.Tensor) -> QuantizedTensor:
        """Backward: the gradient quantized directly at ``grad_bits`` (no cache). Non-finite values stay
        non-finite (their group decodes to NaN), so an overflow still reaches a GradScaler."""
        return self.gradient_codec.encode(grad.detach(), seed=self.seeds.draw(), allow_nonfinite=True)

    @staticmethod
    def decode_gradient(payload: QuantizedTensor) -> torch.Tensor:
        return UniformCodec.decode(payload)

    def activation_nbytes(self, rows: int, row_numel: int, exact_dtype: torch.dtype = torch.float32,
                          first_sight: bool = False) -> int:
        """The formula: bytes of one boundary message with its ids (what ``payload.nbytes`` must equal)."""
        if first_sight:
            return rows * row_numel * torch.tensor([], dtype=exact_dtype).element_size() + 8 * rows
        return activation_wire_nbytes(rows * row_numel, self.bits, self.group_size) + 8 * rows

    def state_dict(self) -> dict:
        return {"cache": {str(k): v.clone() for k, v in self.cache.items()}, "seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cache = {int(k): v.clone() for k, v in state["cache"].items()}
        self.seeds.load_state_dict(state["seeds"] if "seeds" in state else {"next_seed": state["next_seed"]})
