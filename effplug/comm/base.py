"""``GradientCompressor``: the base every compressor extends. It splits a DDP bucket into the parameters it
compresses and the ones it all-reduces exactly, agrees across ranks on non-finite buckets, and meters bytes."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from effplug.comm.collectives import MeteredCollectives
from effplug.logs import log_once
from effplug.profile import CommMeter
from effplug.sizes import tensor_nbytes

log = logging.getLogger("effplug.comm")


@dataclass(frozen=True)
class Segment:
    """One parameter's gradient inside a flat bucket: ``flat[start:start+numel]``."""

    key: str
    start: int
    numel: int
    compress: bool


class GradientCompressor:
    """Base: splits a bucket into compressible and exact parts and averages both across ranks.

    ``min_compress_size`` and ``compress_1d`` decide which tensors are compressed; the rest are all-reduced
    exactly. Subclasses implement ``_average_compressed(flat, segments, comm)``.
    """

    name = "dense"
    # Lossy compressors take another code path for inf/NaN, so ranks must agree on it first; the dense base
    # averages exactly on either path and sends no flag.
    agrees_on_nonfinite = False
    # Average each DDP bucket on a worker thread and return its future at once, so compression overlaps the
    # rest of backward (``comm/overlap.py``). "auto": for a model on a GPU (on CPU the worker competes with
    # backward for the same cores, and measured slower); True, False: always, never.
    overlaps_backward = "auto"

    def __init__(self, min_compress_size: int = 0, compress_1d: bool = True):
        if isinstance(min_compress_size, bool) or not isinstance(min_compress_size, int) or min_compress_size < 0:
            raise ValueError(f"min_compress_size={min_compress_size!r}: use a non-negative int (elements)")
        self.min_compress_size, self.compress_1d = min_compress_size, compress_1d
        self.meter = CommMeter()
        self.process_group = None
        self.param_names: dict[int, str] = {}
        self.uncompressed: dict[str, int] = {}  # name -> numel of tensors sent exactly
        self._reported: set = set()  # what this compressor said once
        self._worker = None  # a BucketWorker once bound to a group of two or more ranks

    # -- wiring -------------------------------------------------------------------------------------------

    def bind(self, module: torch.nn.Module, process_group=None) -> GradientCompressor:
        """Name the parameters (state is keyed by name, so it survives DDP's bucket rebuild and resume)."""
        self.param_names = {id(p): name for name, p in module.named_parameters()}
        self.process_group = process_group
        if self.overlaps_backward not in ("auto", True, False):
            raise ValueError(f"overlaps_backward={self.overlaps_backward!r}: use 'auto', True or False")
        on_gpu = any(p.is_cuda for p in module.parameters())
        overlap = self.overlaps_backward is True or (self.overlaps_backward == "auto" and on_gpu)
        if overlap and dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1:
            from effplug.comm.overlap import BucketWorker

            # every rank binds, so every rank creates the group, in the same order
            ranks = dist.get_process_group_ranks(process_group or dist.group.WORLD)
            self.process_group = dist.new_group(ranks=ranks)
            self._worker = BucketWorker(f"effplug-{self.name}")
        return self

    def should_compress(self, param: torch.Tensor) -> bool:
        return param.numel() >= self.min_compress_size and (self.compress_1d or param.dim() > 1)

    def segments(self, params: list[torch.Tensor]) -> list[Segment]:
        segments, start = [], 0
        for i, p in enumerate(params):
            key = self.param_names.get(id(p), f"param{i}")
            segments.append(Segment(key, start, p.numel(), self.should_compress(p)))
            start += p.numel()
        return segments

    # -- the reduction ------------------------------------------------------------------------------------

    def hook(self, bucket) -> torch.futures.Future:
        """The DDP communication hook body (``ddp_hooks.comm_hook`` calls it with this compressor as state)."""
        flat = bucket.buffer()
        segments = self.segments(bucket.parameters())
        if sum(s.numel for s in segments) != flat.numel():  # a layout we do not know: one stream per bucket
            segments = [Segment(f"bucket{bucket.index()}", 0, flat.numel(), True)]
        end_step = bucket.is_last()
        if self._worker is not None:
            return self._worker.submit(lambda: self.average(flat, segments, end_step=end_step), flat.device)
        out = self.average(flat, segments, end_step=end_step)
        future = torch.futures.Future(devices=[flat.device]) if flat.is_cuda else torch.futures.Future()
        future.set_result(out)
        return future

    def average(self, flat: torch.Tensor, segments: list[Segment] | None = None, end_step: bool = True) -> torch.Tensor:
        """Average ``flat`` (this rank's gradients) across the group; returns a new tensor, same shape.

        ``segments`` (default: one compressible segment) lay out the parameters inside ``flat``.
        """
        if segments is None:
            segments = [Segment("flat", 0, flat.numel(), True)]
        comm = MeteredCollectives(self.process_group, self.meter)
        self.meter.record_dense(tensor_nbytes(flat), comm.world_size)
        self._report_uncompressed(segments, comm.rank)
        out = torch.empty_like(flat)
        exact = [s for s in segments if not s.compress]
        packed = [s for s in segments if s.compress]
        dense = torch.cat([flat[s.start:s.start + s.numel] for s in exact]).div_(comm.world_size) if exact else flat[:0]
        agree = bool(packed) and self.agrees_on_nonfinite
        if agree:
            # One rank's inf/NaN (an fp16 overflow) must send every rank down the same path, or the collectives
            # differ and the job hangs. A one-element flag rides in the exact all-reduce, so it costs no extra call;
            # it stays on the device (no host sync here), and is read only when the reduced flag says to.
            local_bad = (~torch.isfinite(flat)).any().to(flat.dtype).reshape(1)
            dense = torch.cat([dense, local_bad])
        reduced = comm.all_reduce_sum(dense) if dense.numel() else dense
        if agree:
            reduced, flags = reduced[:-1], reduced[-1:]
            if bool(flags[0] != 0):  # some rank overflowed: average exactly (as DDP would) so every rank sees it
                if bool(local_bad[0]):
                    self._warn_nonfinite(comm.rank)
                exact, packed = segments, []
                reduced = comm.all_reduce_sum(flat.div(comm.world_size))
        if exact:  # like DDP's default hook: divide, then sum
            _scatter_back(out, exact, reduced)
        if packed:
            values = torch.cat([flat[s.start:s.start + s.numel] for s in packed])
            _scatter_back(out, packed, self._average_compressed(values, packed, comm))
            self._compressed_something = True
        if end_step:
            self._warn_if_nothing_compressed(comm.rank)
            self.meter.end_step()
        return out

    def _warn_if_nothing_compressed(self, rank: int) -> None:
        if self.meter.steps == 0 and not getattr(self, "_compressed_something", False) and rank == 0:
            log_once(log, "nothing-compressed",
                     "effplug.comm %s: no gradient tensor was compressed in the first step (every one is 1-D or "
                     "below min_compress_size=%d elements), so it sends the same bytes as dense DDP. Lower "
                     "min_compress_size (or set compress_1d=True) to compress them.", self.name, self.min_compress_size,
                     seen=self._reported)

    def _average_compressed(self, flat: torch.Tensor, segments: list[Segment], comm: MeteredCollectives) -> torch.Tensor:
        return comm.all_reduce_sum(flat.div(comm.world_size))

    def _report_uncompressed(self, segments: list[Segment], rank: int) -> None:
        for s in segments:
            if not s.compress:
                self.uncompressed[s.key] = s.numel
        if self.uncompressed and rank == 0:
            log_once(log, "uncompressed", "effplug.comm %s: %d tensors (%d elements) are 1-D or below "
                     "min_compress_size=%d and go through exact all-reduce: %s", self.name, len(self.uncompressed),
                     sum(self.uncompressed.values()), self.min_compress_size, ", ".join(sorted(self.uncompressed)),
                     level=logging.INFO, seen=self._reported)

    def _warn_nonfinite(self, rank: int) -> None:
        log_once(log, "nonfinite",
                 "effplug.comm %s: rank %d holds inf/NaN gradients; every rank averages that bucket exactly "
                 "(no compression, no error-feedback update) so the overflow reaches the optimizer or "
                 "GradScaler on all ranks, as plain DDP. Reported once.", self.name, rank, seen=self._reported)

    # -- checkpoint state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def merge_rank_states(self, states: list[dict], new_world_size: int, new_rank: int) -> dict:
        """The state this rank resumes with, from the per-rank states of a run with another world size."""
        log.warning("effplug.comm %s: resuming on %d ranks from a checkpoint of %d; per-rank state restarts",
                    self.name, new_world_size, len(states))
        return {}

    def __repr__(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in params if k != "self" and hasattr(self, k))
        return f"{type(self).__name__}({args})"


def _scatter_back(out: torch.Tensor, segments: list[Segment], values: torch.Tensor) -> None:
    offset = 0
    for s in segments:
        out[s.start:s.start + s.numel] = values[offset:offset + s.numel]
        offset += s.numel


def _dense_future(flat, group, world, meter) -> torch.futures.Future:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    meter.record("all_reduce", tensor_nbytes(flat), world)
    return default_hooks._allreduce_fut(group, flat)
