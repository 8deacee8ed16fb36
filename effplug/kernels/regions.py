"""A fused op as one unit of data movement. On a GPU each fused op is one kernel: it reads its inputs once and
writes its outputs once. On CPU its torch reference is a chain of aten ops, which a data-movement meter would
count one by one. ``fused_op`` runs an op's implementation and, when a meter listens, has the meter count the
op as its kernel moves bytes instead of the reference's chain (``effplug.movement.data_movement``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

_meters: list = []  # the listening meters, innermost last; each has .suppressed and .count_fused(...)


def listening(meter) -> Callable[[], None]:
    """Register ``meter``; returns the function that unregisters it."""
    _meters.append(meter)
    return lambda: _meters.remove(meter)


def fused_op(name: str, kind: str, run: Callable, *inputs):
    """``run()``, counted by the innermost listening meter as one op ``name`` of ``kind`` that reads
    ``inputs`` and writes what ``run`` returns."""
    if not _meters:
        return run()
    meter = _meters[-1]
    meter.suppressed += 1
    try:
        out = run()
    finally:
        meter.suppressed -= 1
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    meter.count_fused(name, kind, [t for t in inputs if isinstance(t, torch.Tensor)],
                      [t for t in outputs if isinstance(t, torch.Tensor)])
    return out
