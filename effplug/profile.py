"""Meters shared by tests, benchmarks and the demo: saved-activation bytes, peak memory, step time, comm bytes,
and (``data_movement``, from :mod:`effplug.movement`) the bytes and FLOPs of every op."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


def _sparse_parts(t: torch.Tensor) -> tuple:
    if t.layout == torch.sparse_coo:
        return t._indices(), t._values()
    if t.layout == torch.sparse_csr:
        return t.crow_indices(), t.col_indices(), t.values()
    return ()  # other layouts: counted as 0 bytes rather than guessed


def _storage_key(t: torch.Tensor) -> tuple:
    """(device, pointer(s), bytes); a sparse tensor (a GCN's adjacency) is keyed by its parts' storages."""
    if t.layout != torch.strided:
        parts = [_storage_key(p) for p in _sparse_parts(t)]
        return (t.device.type, t.device.index, tuple(k[2] for k in parts) or id(t), sum(k[3] for k in parts))
    storage = t.untyped_storage()
    return (t.device.type, t.device.index, storage.data_ptr(), storage.nbytes())


@dataclass
class SavedBytes:
    """What autograd saved for backward, deduplicated by storage."""

    activation_bytes: int = 0  # storages not owned by a parameter
    parameter_bytes: int = 0  # parameters and views of them (e.g. Linear's weight.t())
    saved_tensors: int = 0  # pack calls, before deduplication
    by_dtype: dict = field(default_factory=dict)

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / 2**20


class SavedTensorMeter:
    """Count the exact bytes autograd saves for backward inside the ``with`` block.

    Storages are counted once however many tensors view them (autograd keeps the whole storage alive).
    Storages shared with ``parameters`` are reported as ``parameter_bytes``, not activations. The pack
    hook returns the tensor itself, so training is unchanged. Keep the meter alive until backward has
    run if you also want it to see unpacks (it does not need them).
    """

    def __init__(self, parameters: Iterable[torch.Tensor] | torch.nn.Module | None = None):
        if isinstance(parameters, torch.nn.Module):
            parameters = list(parameters.parameters()) + list(parameters.buffers())
        self._parameter_storages = {_storage_key(p) for p in (parameters or [])}
        self._seen: set = set()
        self.result = SavedBytes()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.result.saved_tensors += 1
        key = _storage_key(t)
        if key not in self._seen:
            self._seen.add(key)
            nbytes = key[3]
            if key in self._parameter_storages:
                self.result.parameter_bytes += nbytes
            else:
                self.result.activation_bytes += nbytes
                name = str(t.dtype).replace("torch.", "")
                self.result.by_dtype[name] = self.result.by_dtype.get(name, 0) + nbytes
        return t

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self.result

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_bytes(fn: Callable[[], object], parameters=None) -> SavedBytes:
    """Run ``fn`` (a forward pass, with loss) under a ``SavedTensorMeter`` and return its count."""
    meter = SavedTensorMeter(parameters)
    with meter:
        out = fn()
    del out
    return meter.result


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str | None = None, parameters=None) -> int:
    """Peak allocated memory of ``fn`` on CUDA; on CPU, the saved-activation bytes (the figure that scales)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return saved_bytes(fn, parameters).activation_bytes


def count_host_syncs(fn: Callable[[], object]) -> int:
    """How many times ``fn`` makes the host wait on the GPU (``torch.cuda.set_sync_debug_mode("warn")``
    warns once per synchronizing call). CUDA only."""
    import warnings

    if not torch.cuda.is_available():
        raise RuntimeError("count_host_syncs needs a CUDA device: host syncs exist only against a GPU stream")
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


@dataclass
class StepTimes:
    median_s: float
    times_s: list

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], steps: int = 20, warmup: int = 3, device=None) -> StepTimes:
    """Median wall time of ``step`` over ``steps`` calls after ``warmup`` calls (CUDA-synchronized)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return StepTimes(statistics.median(times), times)


class StepTimer:
    """Start/stop timer for loops you do not own (e.g. Lightning batch hooks); median after warm-up."""

    def __init__(self, warmup: int = 3, device=None):
        self.warmup, self.device = warmup, device
        self.times_s: list = []
        self._start: float | None = None
        self._count = 0

    def start(self) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        _sync(self.device)
        self._count += 1
        if self._count > self.warmup:
            self.times_s.append(time.perf_counter() - self._start)
        self._start = None

    @property
    def median_s(self) -> float:
        if not self.times_s:
            raise RuntimeError(f"StepTimer saw no steps after its {self.warmup} warm-up steps")
        return statistics.median(self.times_s)


def ring_allreduce_bytes(nbytes: int, world_size: int) -> float:
    """Bytes one rank sends in a ring all-reduce of ``nbytes``: reduce-scatter plus all-gather, 2(W-1)/W * n."""
    return 2 * (world_size - 1) * nbytes / world_size


def allgather_bytes(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends when every rank must receive its ``nbytes`` payload: (W-1) * n (ring or direct)."""
    return (world_size - 1) * nbytes


def alltoall_bytes(nbytes: int, world_size: int) -> float:
    """Bytes one rank sends in an all-to-all of ``nbytes`` split evenly over ranks: (W-1)/W * n."""
    return (world_size - 1) * nbytes / world_size


class CommMeter:
    """Bytes each rank sends per step, next to what dense all-reduce of the same gradients would send.

    Every collective a compressor issues is recorded with the size of the tensors it hands over; the sent
    bytes follow the standard algorithms (ring all-reduce, ring/direct all-gather, direct all-to-all), see
    the ``*_bytes`` functions. ``collective_s`` is the wall time spent waiting on collectives.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.sent_bytes = 0.0
        self.dense_bytes = 0.0
        self.collective_s = 0.0
        self.calls: dict[str, int] = {}
        self.trace: list[tuple[str, int]] | None = None  # set to [] to log every (collective, bytes) in order

    def record(self, op: str, nbytes: int, world_size: int = 2) -> None:
        """``op``: a collective by name, or "send" (a point-to-point message of ``nbytes``)."""
        formula = {"all_reduce": ring_allreduce_bytes, "all_gather": allgather_bytes, "all_to_all": alltoall_bytes,
                   "send": lambda n, _w: n}[op]
        self.sent_bytes += formula(nbytes, world_size)
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.trace is not None:
            self.trace.append((op, nbytes))

    def record_dense(self, nbytes: int, world_size: int) -> None:
        self.dense_bytes += ring_allreduce_bytes(nbytes, world_size)

    def end_step(self) -> None:
        self.steps += 1

    @property
    def bytes_per_step(self) -> float:
        return self.sent_bytes / max(self.steps, 1)

    @property
    def dense_bytes_per_step(self) -> float:
        return self.dense_bytes / max(self.steps, 1)

    @property
    def ratio(self) -> float:
        """Dense bytes over sent bytes (how many times fewer bytes went on the wire)."""
        return self.dense_bytes / self.sent_bytes if self.sent_bytes else float("inf")

    def as_dict(self) -> dict:
        return {"steps": self.steps, "bytes_per_step": self.bytes_per_step,
                "dense_bytes_per_step": self.dense_bytes_per_step, "ratio": self.ratio,
                "collective_s": self.collective_s, "calls": dict(self.calls)}


def write_report(path, rows: list, argv: list | None = None, **fields) -> None:
    """The one JSON every benchmark and ``effplug demo`` writes: environment, command line, any extra fields
    (steps, device, ...) and the rows. The parent folder is created."""
    import json
    import sys
    from pathlib import Path

    from effplug.envinfo import environment

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv) if argv is None else list(argv)
    fields = {k: (str(v) if k == "device" else v) for k, v in fields.items()}
    out.write_text(json.dumps({"environment": environment(), "argv": argv, **fields, "rows": rows}, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)


def data_movement(fn, model=None):
    """The bytes every aten op of ``fn`` reads and writes, and its FLOPs (:func:`effplug.movement.data_movement`)."""
    from effplug.movement import data_movement as count

    return count(fn, model)
