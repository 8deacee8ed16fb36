"""The collectives a compressor calls, each timed and its bytes counted in a ``CommMeter``."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from effplug.profile import CommMeter
from effplug.sizes import tensor_nbytes


class MeteredCollectives:
    """The collectives a compressor issues, metered; a world of one (no process group) is the identity."""

    def __init__(self, group, meter: CommMeter):
        self.group, self.meter = group, meter
        self.world_size = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if self.world_size > 1 or dist.is_initialized() else 0

    def _timed(self, op: str, nbytes: int, run):
        start = time.perf_counter()
        if self.world_size > 1:
            run()
        self.meter.collective_s += time.perf_counter() - start
        self.meter.record(op, nbytes, self.world_size)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self._timed("all_reduce", tensor_nbytes(tensor), lambda: dist.all_reduce(tensor, group=self.group))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            self._timed("all_gather", tensor_nbytes(tensor), lambda: None)
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._timed("all_gather", tensor_nbytes(tensor), lambda: dist.all_gather(out, tensor, group=self.group))
        return out

    def all_to_all(self, tensor: torch.Tensor) -> torch.Tensor:
        """Chunk ``j`` of ``tensor`` (split evenly) goes to rank ``j``; returns the chunks received, rank order."""
        out = torch.empty_like(tensor) if self.world_size > 1 else tensor
        self._timed("all_to_all", tensor_nbytes(tensor),
                    lambda: dist.all_to_all_single(out, tensor, group=self.group))
        return out
