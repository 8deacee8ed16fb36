"""Top-k with error feedback (Stich et al. 2018; Alistarh et al. 2018): all-gather of (value, index) pairs,
the selection and residuals kept by ``TopKCodec``."""

from __future__ import annotations

import torch

from effplug.codecs import TopKCodec
from effplug.comm.base import GradientCompressor, Segment


class TopKCompressor(GradientCompressor):
    """Top-k with error feedback; ``ratio=0.01`` sends the largest 1% of ``|g + e|`` as (fp value, int32 index).

    Residuals are kept per parameter (keyed by name), so they survive DDP rebuilding its buckets after the
    first step and a resume. ``decode(sent) + e_new == g + e_old`` exactly.
    """

    name = "topk"
    agrees_on_nonfinite = True

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True, min_compress_size: int = 0,
                 compress_1d: bool = True):
        self.codec = TopKCodec(ratio, error_feedback)
        super().__init__(min_compress_size, compress_1d)
        self.ratio, self.error_feedback = self.codec.ratio, error_feedback

    @property
    def residuals(self) -> dict[str, torch.Tensor]:
        return self.codec.residuals

    def select(self, flat: torch.Tensor, segments: list[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Error-feedback selection on this rank: (values, int32 indices); updates the residuals."""
        payload = self.codec.encode_segments(flat, [(s.key, s.numel) for s in segments])
        return payload.values, payload.indices.to(torch.int32)

    def _average_compressed(self, flat, segments, comm):
        values, indices = self.select(flat, segments)
        all_values, all_indices = comm.all_gather(values), comm.all_gather(indices)
        out = torch.zeros_like(flat)
        for v, i in zip(all_values, all_indices, strict=True):  # rank order, so every rank sums identically
            out.index_add_(0, i.long(), v.div(comm.world_size))
        return out

    def state_dict(self) -> dict:
        return self.codec.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.codec.load_state_dict(state)

    def merge_rank_states(self, states, new_world_size, new_rank):
        # What the residuals would add to the averaged update is sum_r e_r / W; giving every new rank
        # sum_r e_r / W keeps that pending correction exact on any world size.
        merged: dict[str, torch.Tensor] = {}
        for state in states:
            for key, value in state.get("residuals", {}).items():
                merged[key] = merged[key] + value if key in merged else value.clone()
        return {"residuals": {k: v / len(states) for k, v in merged.items()}}
