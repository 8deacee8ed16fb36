"""PowerSGD (Vogels et al. 2019) through torch's hook, metered and checkpointed."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from effplug.comm.base import GradientCompressor, _dense_future
from effplug.sizes import tensor_nbytes

log = logging.getLogger("effplug.comm")


class PowerSGDCompressor(GradientCompressor):
    """torch's PowerSGD hook (rank-``rank`` P/Q with error feedback and warm start), metered and checkpointed.

    ``start_iter`` dense steps come first (torch needs >= 2 with error feedback: DDP rebuilds its buckets
    after step 1). After a resume, one dense step runs before the restored state is used, for the same reason:
    torch keys that state by bucket index, and the first step of a new DDP uses the unrebuilt buckets.
    """

    name = "powersgd"
    overlaps_backward = False  # torch's hook returns its own chained futures already

    def __init__(self, rank: int = 2, start_iter: int = 10, min_compression_rate: float = 2.0,
                 error_feedback: bool = True, warm_start: bool = True, seed: int = 0):
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank={rank!r}: PowerSGD's matrix approximation rank must be an int >= 1")
        if start_iter < 2 and (error_feedback or warm_start):
            raise ValueError("start_iter must be >= 2 with error_feedback or warm_start (DDP rebuilds its buckets "
                             "after the first step)")
        super().__init__(min_compress_size=0, compress_1d=True)
        self.rank, self.start_iter, self.min_compression_rate = rank, start_iter, min_compression_rate
        self.error_feedback, self.warm_start, self.seed = error_feedback, warm_start, seed
        self.state = None
        self._pending: dict | None = None
        self._dense_steps_left = 0

    def _torch_state(self, group):
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        if self.state is None:
            self.state = psgd.PowerSGDState(
                process_group=group, matrix_approximation_rank=self.rank, start_powerSGD_iter=self.start_iter,
                min_compression_rate=self.min_compression_rate, use_error_feedback=self.error_feedback,
                warm_start=self.warm_start, random_seed=self.seed)
            # torch's stats logger would print every few steps; the meter reports bytes instead
            self.state.compression_stats_logging_frequency = 2**62
            self.state.next_stats_report = 2**62
        return self.state

    def hook(self, bucket) -> torch.futures.Future:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        group = self.process_group
        world = dist.get_world_size(group)
        state = self._torch_state(group)
        flat = bucket.buffer()
        self.meter.record_dense(tensor_nbytes(flat), world)
        if self._pending is not None and self._dense_steps_left == 0:
            self._apply(self._pending, flat.device)
            self._pending = None
        if self._dense_steps_left > 0:  # the first step after a resume: buckets are not rebuilt yet
            if bucket.is_last():
                self._dense_steps_left -= 1
            future = _dense_future(flat, group, world, self.meter)
        elif state.iter < state.start_powerSGD_iter:
            future = psgd.powerSGD_hook(state, bucket)
            self.meter.record("all_reduce", tensor_nbytes(flat), world)
        else:
            before = state.total_numel_after_compression
            future = psgd.powerSGD_hook(state, bucket)
            sent = (state.total_numel_after_compression - before) * flat.element_size()
            self.meter.record("all_reduce", sent, world)
        if bucket.is_last():
            self.meter.end_step()
        if dist.get_backend(group) == "gloo":
            # torch's hook chains P and Q all-reduces in future callbacks; under gloo, callbacks of two buckets can
            # interleave differently on two ranks, which mismatches collectives ("Received data size doesn't match
            # expected size"). Finishing each bucket before the next keeps every rank's order the same.
            future.wait()
        return future

    def state_dict(self) -> dict:
        if self._pending is not None:
            return dict(self._pending)
        if self.state is None:
            return {}
        keys, pos, has_gauss, cached = self.state.rng.get_state()[1:]
        return {
            "iter": self.state.iter,
            "error": {str(k): v.detach().cpu().clone() for k, v in self.state.error_dict.items()},
            "p_memory": {str(k): v.detach().cpu().clone() for k, v in self.state.p_memory_dict.items()},
            "q_memory": {str(k): v.detach().cpu().clone() for k, v in self.state.q_memory_dict.items()},
            "rng": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
                    "cached_gaussian": float(cached)},
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._pending, self._dense_steps_left = dict(state), 1

    def _apply(self, saved: dict, device: torch.device) -> None:
        import numpy as np

        state = self.state
        state.iter = int(saved["iter"])
        for field in ("error", "p_memory", "q_memory"):
            setattr(state, f"{field}_dict", {int(k): v.to(device) for k, v in saved[field].items()})
        rng = saved["rng"]
        state.rng.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"],
                             rng["cached_gaussian"]))
