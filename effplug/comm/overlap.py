"""Compression that overlaps the rest of backward: each DDP bucket is averaged on one worker thread, in the order
DDP hands the buckets over, and the hook returns a future that completes when it is done (as torch's
``allreduce_hook`` returns the all-reduce's future).

Why a thread and a process group of its own: a compressor runs several dependent collectives per bucket
(exact part and flag, then the compressed payloads), with encode and decode between them, so it cannot be one
chained future. On one worker the buckets run strictly in turn, and DDP hands them over in bucket order on
every rank, so every rank issues the same collectives in the same order. A group of its own keeps them apart
from what DDP itself sends meanwhile on its group (the unused-parameter map, buffer broadcasts). On a GPU the
worker waits on an event recorded where the bucket became ready and works on a stream of its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch


class BucketWorker:
    """Runs submitted bucket averages one at a time, in submission order, on a daemon thread."""

    def __init__(self, name: str = "effplug-comm"):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._streams: dict[int, torch.cuda.Stream] = {}

    def submit(self, job: Callable[[], torch.Tensor], device: torch.device) -> torch.futures.Future:
        """Queue ``job``; its future holds what it returns (or raises what it raised)."""
        future = torch.futures.Future(devices=[device]) if device.type == "cuda" else torch.futures.Future()
        ready = None
        if device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(device))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((job, future, device, ready))
        return future

    def _run(self) -> None:
        while True:
            job, future, device, ready = self._jobs.get()
            try:
                if ready is None:
                    result = job()
                else:
                    torch.cuda.set_device(device)
                    stream = self._streams.setdefault(device.index, torch.cuda.Stream(device))
                    with torch.cuda.stream(stream):
                        stream.wait_event(ready)
                        result = job()
                future.set_result(result)
            except BaseException as error:  # the future carries it to DDP's wait, on the training thread
                future.set_exception(error)

    @property
    def running_thread(self) -> threading.Thread | None:
        return self._thread
