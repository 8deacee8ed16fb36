"""Mesa (Pan et al., 2021): 8-bit saved activations with running per-channel / per-head ranges.

For each group ``g`` (a channel; a head for 4-D attention tensors ``[B, H, N, D]``, which is also the
channel axis of a 4-D conv map ``[B, C, H, W]``) Mesa keeps running estimates (Sec. 3.2, eq. 4-5):

    shift_g <- shift_g - (1 - decay) * (shift_g - min_g)
    clip_g  <- clip_g  - (1 - decay) * (clip_g  - (max_g - min_g))

initialised from the first batch, and stores ``q = clamp(floor((x - shift_g) * (2**b - 1) / clip_g + u), 0, 2**b - 1)``
with ``u ~ U[0, 1)``.

Deviation (docs/mesa.md): the range a batch is *stored* with is the running range widened to cover that
batch, ``[min(shift_g, min_g), max(shift_g + clip_g, max_g)]``; the running estimates themselves follow eq. 4-5.
In the paper values outside the running range saturate at the end codes. That is not a small error: a saved
``log_softmax`` output moves past its running range as logits grow, and its backward uses ``exp(output)``, so
char-GPT-2 reached val loss 2.990 against 2.064 exact (docs/mesa.md). Widening
costs no bytes (the per-channel shift and step are stored anyway) and makes the error bound hold for every
element: ``|x - x_hat| <= step_g``.
"""

from __future__ import annotations

import torch

from effplug.codecs import SeedStream
from effplug.codecs.affine import AffineCodec
from effplug.compress.method import CompressionMethod
from effplug.kernels.affine import AffineCodes
from effplug.kernels.channel_stats import channel_min_max

MesaPayload = AffineCodes  # codes plus the per-channel low (the widened shift) and step


def channel_axis(ndim: int) -> int:
    """Dim 1 for 4-D tensors (conv channels, attention heads); the last dim otherwise (hidden channels)."""
    return 1 if ndim == 4 else ndim - 1


class MesaMethod(CompressionMethod):
    name = "mesa"

    def __init__(self, config):
        super().__init__(config)
        self.bits = int(config.bits)
        self.codec = AffineCodec(self.bits, config.stochastic, SeedStream(config.seed))
        self.seeds = self.codec.seeds
        self.shift: dict[str, torch.Tensor] = {}
        self.clip: dict[str, torch.Tensor] = {}

    def _update_range(self, key: str, x: torch.Tensor, axis: int) -> tuple[torch.Tensor, ...]:
        """The running ``(shift, clip)`` after this batch (eq. 4-5), and this batch's ``(min, max)``; None, with
        the state untouched, when the batch holds inf/NaN."""
        lo, hi = channel_min_max(x, axis)  # one read of x, no fp32 copy
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            return None  # inf/NaN: the running range must not take it in (one host sync per tensor)
        shift, clip = self.shift.get(key), self.clip.get(key)
        if shift is not None and shift.device != lo.device:  # resumed from a CPU checkpoint
            shift, clip = shift.to(lo.device), clip.to(lo.device)
        if shift is None or shift.shape != lo.shape or shift.device != lo.device:
            shift, clip = lo, hi - lo
        else:
            decay = 1.0 - self.config.ema_decay
            shift = shift - decay * (shift - lo)
            clip = clip - decay * (clip - (hi - lo))
        self.shift[key], self.clip[key] = shift, clip
        return shift, clip, lo, hi

    def encode(self, x: torch.Tensor, slot: int) -> MesaPayload | None:
        axis = channel_axis(x.ndim)
        if x.shape[axis] == 1:
            # Per-row statistics (LayerNorm's mean/rstd): one "channel" whose range moves every batch would
            # saturate; Mesa's own LayerNorm keeps them exact too.
            self.decline_reason = "mesa keeps per-row statistics (a channel axis of size 1) exact"
            return None
        ranges = self._update_range(str(slot), x, axis)
        if ranges is None:
            self.decline_reason = "mesa keeps a tensor holding inf/NaN exact, and its running range unchanged"
            return None
        shift, clip, lo, hi = ranges
        low = torch.minimum(shift, lo)  # the running range, widened to cover this batch: nothing saturates
        span = torch.maximum(shift + clip, hi) - low
        step = torch.where(span > 0, span / (2**self.bits - 1), torch.ones_like(span))
        return self.codec.encode(x, low=low, step=step, axis=axis)

    def decode(self, p: MesaPayload) -> torch.Tensor:
        return AffineCodec.decode(p)

    def state_dict(self) -> dict:
        return {
            "seeds": self.seeds.state_dict(),
            "shift": {k: v.detach().cpu().clone() for k, v in self.shift.items()},
            "clip": {k: v.detach().cpu().clone() for k, v in self.clip.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state.get("seeds", state))  # "next_seed": effplug before SeedStream.state_dict
        self.shift = {k: v.float() for k, v in state["shift"].items()}
        self.clip = {k: v.float() for k, v in state["clip"].items()}
