"""Gradient compressors for data-parallel training (framework-free; the DDP hook adapter is ``ddp_hooks``).

Each compressor averages a flat gradient vector across the ranks of a process group in fewer bytes:

* ``TopKCompressor``: top-k sparsification with error feedback (Alistarh et al., NeurIPS 2018; Stich et
  al. 2018). Per rank: ``acc = g + e``; send ``(acc[S], S)`` for the k largest ``|acc|``; ``e = acc - sent``.
  Sparse vectors do not sum, so the exchange is an all-gather of values and indices.
* ``NaturalCompressor``: natural compression C_nat (Horvath et al. 2022, eq. 3), unbiased stochastic rounding
  to a power of two sent as 8-bit sign+exponent codes. Exchanged as a compressed reduce-scatter (all-to-all of
  codes, each rank averages its chunk) and a compressed all-gather: the paper's bidirectional scheme, where the
  aggregated chunk is compressed again by its owner, so the bytes stay ~4x below dense at any world size.
* ``CGXCompressor``: CGX (Markov et al. 2022) bucketed max-min quantization, b-bit stochastic rounding with one
  scale and zero per bucket of 1024, exchanged as a quantized reduce-scatter then all-gather. Tensors that are
  1-D or smaller than ``min_compress_size`` are all-reduced exactly (CGX's layer filter).
* ``PowerSGDCompressor``: torch's PowerSGD hook (Vogels et al. 2019), the production baseline, with its state
  checkpointed.

Anything a compressor leaves uncompressed goes through a plain all-reduce, exactly as DDP would, and is
reported once. Per-rank state (residuals, seed positions) is ``state_dict()``: plain dicts of tensors and ints.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from effplug.codecs import Pow2Codec, SeedStream, TopKCodec, UniformCodec
from effplug.kernels import quant as _quant
from effplug.logs import log_once
from effplug.options import check_options
from effplug.profile import CommMeter

log = logging.getLogger("effplug.comm")


@dataclass(frozen=True)
class Segment:
    """One parameter's gradient inside a flat bucket: ``flat[start:start+numel]``."""

    key: str
    start: int
    numel: int
    compress: bool


class _Collectives:
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
        self._timed("all_reduce", _nbytes(tensor), lambda: dist.all_reduce(tensor, group=self.group))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            self._timed("all_gather", _nbytes(tensor), lambda: None)
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._timed("all_gather", _nbytes(tensor), lambda: dist.all_gather(out, tensor, group=self.group))
        return out

    def all_to_all(self, tensor: torch.Tensor) -> torch.Tensor:
        """Chunk ``j`` of ``tensor`` (split evenly) goes to rank ``j``; returns the chunks received, rank order."""
        out = torch.empty_like(tensor) if self.world_size > 1 else tensor
        self._timed("all_to_all", _nbytes(tensor),
                    lambda: dist.all_to_all_single(out, tensor, group=self.group))
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class GradientCompressor:
    """Base: splits a bucket into compressible and exact parts and averages both across ranks.

    ``min_compress_size`` and ``compress_1d`` decide which tensors are compressed; the rest are all-reduced
    exactly. Subclasses implement ``_average_compressed(flat, segments, comm)``.
    """

    name = "dense"
    # Lossy compressors take another code path for inf/NaN, so ranks must agree on it first; the dense base
    # averages exactly on either path and sends no flag.
    agrees_on_nonfinite = False

    def __init__(self, min_compress_size: int = 0, compress_1d: bool = True):
        if isinstance(min_compress_size, bool) or not isinstance(min_compress_size, int) or min_compress_size < 0:
            raise ValueError(f"min_compress_size={min_compress_size!r}: use a non-negative int (elements)")
        self.min_compress_size, self.compress_1d = min_compress_size, compress_1d
        self.meter = CommMeter()
        self.process_group = None
        self.param_names: dict[int, str] = {}
        self.uncompressed: dict[str, int] = {}  # name -> numel of tensors sent exactly
        self._reported = False

    # -- wiring -------------------------------------------------------------------------------------------

    def bind(self, module: torch.nn.Module, process_group=None) -> GradientCompressor:
        """Name the parameters (state is keyed by name, so it survives DDP's bucket rebuild and resume)."""
        self.param_names = {id(p): name for name, p in module.named_parameters()}
        self.process_group = process_group
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
        out = self.average(flat, segments, end_step=bucket.is_last())
        future = torch.futures.Future(devices=[flat.device]) if flat.is_cuda else torch.futures.Future()
        future.set_result(out)
        return future

    def average(self, flat: torch.Tensor, segments: list[Segment] | None = None, end_step: bool = True) -> torch.Tensor:
        """Average ``flat`` (this rank's gradients) across the group; returns a new tensor, same shape.

        ``segments`` (default: one compressible segment) lay out the parameters inside ``flat``.
        """
        if segments is None:
            segments = [Segment("flat", 0, flat.numel(), True)]
        comm = _Collectives(self.process_group, self.meter)
        self.meter.record_dense(_nbytes(flat), comm.world_size)
        self._report_uncompressed(segments, comm.rank)
        out = torch.empty_like(flat)
        exact = [s for s in segments if not s.compress]
        packed = [s for s in segments if s.compress]
        dense = torch.cat([flat[s.start:s.start + s.numel] for s in exact]).div_(comm.world_size) if exact else flat[:0]
        agree = bool(packed) and self.agrees_on_nonfinite
        if agree:
            # One rank's inf/NaN (an fp16 overflow) must send every rank down the same path, or the collectives
            # differ and the job hangs. A one-element flag rides in the exact all-reduce, so it costs no extra call.
            local_bad = not bool(torch.isfinite(flat).all())
            if local_bad:
                self._warn_nonfinite(comm.rank)
            dense = torch.cat([dense, flat.new_full((1,), float(local_bad))])
        reduced = comm.all_reduce_sum(dense) if dense.numel() else dense
        if agree:
            reduced, flags = reduced[:-1], reduced[-1:]
            if bool(flags[0] != 0):  # some rank overflowed: average exactly (as DDP would) so every rank sees it
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
            log_once(log, f"nothing-compressed-{self.name}-{id(self)}",
                     "effplug.comm %s: no gradient tensor was compressed in the first step (every one is 1-D or "
                     "below min_compress_size=%d elements), so it sends the same bytes as dense DDP. Lower "
                     "min_compress_size (or set compress_1d=True) to compress them.", self.name, self.min_compress_size)

    def _average_compressed(self, flat: torch.Tensor, segments: list[Segment], comm: _Collectives) -> torch.Tensor:
        return comm.all_reduce_sum(flat.div(comm.world_size))

    def _report_uncompressed(self, segments: list[Segment], rank: int) -> None:
        for s in segments:
            if not s.compress:
                self.uncompressed[s.key] = s.numel
        if not self._reported and self.uncompressed:
            self._reported = True
            if rank == 0:
                total = sum(self.uncompressed.values())
                log.info("effplug.comm %s: %d tensors (%d elements) are 1-D or below min_compress_size=%d and go "
                         "through exact all-reduce: %s", self.name, len(self.uncompressed), total,
                         self.min_compress_size, ", ".join(sorted(self.uncompressed)))

    def _warn_nonfinite(self, rank: int) -> None:
        if not getattr(self, "_warned_nonfinite", False):
            log.warning("effplug.comm %s: rank %d holds inf/NaN gradients; every rank averages that bucket exactly "
                        "(no compression, no error-feedback update) so the overflow reaches the optimizer or "
                        "GradScaler on all ranks, as plain DDP. Reported once.", self.name, rank)
        self._warned_nonfinite = True

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


class _ReduceScatterAllGather(GradientCompressor):
    """Compressed reduce-scatter (all-to-all of encoded chunks, owner averages) then compressed all-gather.

    Every parameter is encoded on its own: padded to a multiple of ``world * chunk_multiple`` and split into
    one slice per rank, with random draws from its own seed stream (keyed by name, like top-k's residuals).
    So what a parameter's gradient becomes does not depend on which DDP bucket holds it, and a resumed run
    (whose first step uses DDP's initial buckets, not the rebuilt ones) repeats the uninterrupted run exactly.
    """

    chunk_multiple = 1
    agrees_on_nonfinite = True

    def __init__(self, seed: int | None, min_compress_size: int, compress_1d: bool):
        super().__init__(min_compress_size, compress_1d)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r}: use an int, or None to derive it from the framework's seed")
        self.seed = seed

    # subclasses: ``self.codec`` (its seed streams keyed by parameter name); every parameter's ``parts`` equal
    # byte slices; one slice decoded; a slice's bytes
    def _encode_many(self, vectors: list[torch.Tensor], parts: int, keys: list[str]) -> list[list[torch.Tensor]]: ...

    def _decode_part(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor: ...

    def _part_nbytes(self, numel: int) -> int: ...

    def _average_compressed(self, flat, segments, comm):
        world, rank = comm.world_size, comm.rank
        multiple = world * self.chunk_multiple
        layout, offset = [], 0  # (segment, offset in flat, slice length per rank)
        for seg in segments:
            layout.append((seg, offset, -(-seg.numel // multiple) * multiple // world))
            offset += seg.numel
        padded_segments = []
        for seg, start, length in layout:
            padded = flat.new_zeros(length * world)
            padded[:seg.numel] = flat[start:start + seg.numel]
            padded_segments.append(padded)
        self.codec.seeds.set_scope(f"rank{rank}")  # every rank draws its own streams
        keys = [s.key for s, _, _ in layout]
        encoded = self._encode_many(padded_segments, world, keys)
        send = torch.cat([parts[j] for j in range(world) for parts in encoded])
        received = comm.all_to_all(send).view(world, -1)
        sizes = [self._part_nbytes(length) for _, _, length in layout]
        parts = [row.split(sizes) for row in received]
        own = []  # this rank's slice of every parameter, averaged over ranks (rank order, as a ring would sum)
        for i, (_, _, length) in enumerate(layout):
            total = self._decode_part(parts[0][i], length, flat.dtype)
            for r in range(1, world):
                total = total + self._decode_part(parts[r][i], length, flat.dtype)
            own.append(total.div_(world))
        reencoded = [parts[0] for parts in self._encode_many(own, 1, keys)]
        gathered = [g.split(sizes) for g in comm.all_gather(torch.cat(reencoded))]
        out = []
        for i, (seg, _, length) in enumerate(layout):
            whole = torch.cat([self._decode_part(gathered[r][i], length, flat.dtype) for r in range(world)])
            out.append(whole[:seg.numel])
        return torch.cat(out)

    def state_dict(self) -> dict:
        return self.codec.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if "next_seed" in state:  # effplug before the codec core: {"next_seed": {name: position}}
            streams = state["next_seed"]
            if not isinstance(streams, dict):  # older still: one stream per rank, no way to map it
                log.warning("effplug.comm %s: this checkpoint keeps one seed stream per rank (an older effplug); "
                            "per-parameter streams restart", self.name)
                return
            self.codec.seeds.streams = {k: SeedStream.from_state({"next_seed": v}) for k, v in streams.items()}
            return
        self.codec.load_state_dict(state)


class NaturalCompressor(_ReduceScatterAllGather):
    """Natural compression: every element becomes ``±2**e`` (unbiased), sent as one byte plus a base exponent."""

    name = "natural"

    def __init__(self, seed: int | None = None, min_compress_size: int = 0, compress_1d: bool = True):
        super().__init__(seed, min_compress_size, compress_1d)
        self.codec = Pow2Codec(seed)

    def _encode_many(self, vectors, parts, keys):
        return [Pow2Codec.to_bytes(codes, parts) for codes in self.codec.encode_many(vectors, keys)]

    def _decode_part(self, payload, numel, dtype):
        return self.codec.decode(Pow2Codec.from_bytes(payload, numel, dtype))

    def _part_nbytes(self, numel):
        return Pow2Codec.wire_nbytes(numel)


class CGXCompressor(_ReduceScatterAllGather):
    """CGX: ``bits``-bit stochastic max-min quantization per bucket of ``bucket_size`` values.

    Per bucket: ``zero = min``, ``scale = (max - min) / (2**bits - 1)`` (bf16, so gradients never underflow
    the scale), ``q = floor((x - zero) / scale + u)``; an unbiased estimate of ``x``. Tensors that are 1-D or
    below ``min_compress_size`` elements stay exact (CGX's layer filter). Buckets never straddle two
    parameters: each parameter is padded to whole buckets.
    """

    name = "cgx"

    def __init__(self, bits: int = 4, bucket_size: int = 1024, seed: int | None = None,
                 min_compress_size: int = 1024, compress_1d: bool = False):
        if bits not in _quant.ALLOWED_BITS:
            raise ValueError(f"bits={bits!r} is not supported by cgx: use 1, 2, 4 or 8 (codes are bit-packed "
                             "into bytes); 4 is CGX's default")
        super().__init__(seed, min_compress_size, compress_1d)
        # bf16 scales, so gradients never underflow the scale
        self.codec = UniformCodec(bits, bucket_size, stochastic=True, seed=seed, scale_dtype=torch.bfloat16,
                                  group_name="bucket_size")
        self.bits, self.bucket_size = bits, bucket_size
        self.chunk_multiple = bucket_size

    def _encode_many(self, vectors, parts, keys):
        return [[self.codec.to_bytes(p) for p in self.codec.split(self.codec.encode(v, k), parts)]
                for v, k in zip(vectors, keys, strict=True)]

    def _decode_part(self, payload, numel, dtype):
        return self.codec.decode(self.codec.from_bytes(payload, [numel], dtype))

    def _part_nbytes(self, numel):
        return self.codec.nbytes_for(numel)


class PowerSGDCompressor(GradientCompressor):
    """torch's PowerSGD hook (rank-``rank`` P/Q with error feedback and warm start), metered and checkpointed.

    ``start_iter`` dense steps come first (torch needs >= 2 with error feedback: DDP rebuilds its buckets
    after step 1). After a resume, one dense step runs before the restored state is used, for the same reason:
    torch keys that state by bucket index, and the first step of a new DDP uses the unrebuilt buckets.
    """

    name = "powersgd"

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
        self.meter.record_dense(_nbytes(flat), world)
        if self._pending is not None and self._dense_steps_left == 0:
            self._apply(self._pending, flat.device)
            self._pending = None
        if self._dense_steps_left > 0:  # the first step after a resume: buckets are not rebuilt yet
            if bucket.is_last():
                self._dense_steps_left -= 1
            future = _dense_future(flat, group, world, self.meter)
        elif state.iter < state.start_powerSGD_iter:
            future = psgd.powerSGD_hook(state, bucket)
            self.meter.record("all_reduce", _nbytes(flat), world)
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


def _dense_future(flat, group, world, meter) -> torch.futures.Future:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    meter.record("all_reduce", _nbytes(flat), world)
    return default_hooks._allreduce_fut(group, flat)


COMPRESSORS: dict[str, type[GradientCompressor]] = {
    "topk": TopKCompressor, "natural": NaturalCompressor, "cgx": CGXCompressor, "powersgd": PowerSGDCompressor,
}


def compressor_options(name: str) -> set[str]:
    """The keyword options compressor ``name`` accepts."""
    return {k for k in inspect.signature(_compressor_class(name).__init__).parameters if k != "self"}


def _compressor_class(name: str) -> type[GradientCompressor]:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown gradient compressor {name!r}; choose one of {sorted(COMPRESSORS)}")
    return COMPRESSORS[name]


def make_compressor(compressor: str | GradientCompressor, **options) -> GradientCompressor:
    """A compressor from its name and options (or the instance itself, when no options are given)."""
    if isinstance(compressor, GradientCompressor):
        if options:
            raise ValueError(f"options {sorted(options)} were given with a ready compressor instance; set them on it")
        return compressor
    check_options(f"the {compressor!r} compressor", options, compressor_options(compressor))
    return _compressor_class(compressor)(**options)
