"""Compressed activations: store what autograd saves for backward in 1-8 bits.

Plain loops::

    with effplug.compress.compressed_activations(model, method="actnn", bits=4) as engine:
        loss = loss_fn(model(x), y)
        engine.calibrate(loss)  # only gact/comet use it; a no-op otherwise
        loss.backward()

Lightning: ``effplug.callbacks.ActivationCompression``; HF: ``effplug.hf.ActivationCompressionCallback``.
"""

from __future__ import annotations

from contextlib import contextmanager

from effplug.compress.config import METHODS, CompressionConfig
from effplug.compress.engine import ActivationCompressor, CompressionReport

__all__ = ["METHODS", "ActivationCompressor", "CompressionConfig", "CompressionReport", "compressed_activations"]


@contextmanager
def compressed_activations(model, config: CompressionConfig | None = None, **kwargs):
    """Compress activations saved inside ``model``'s forward while the block runs; yields the engine."""
    engine = ActivationCompressor(model, config, **kwargs).attach()
    try:
        yield engine
    finally:
        engine.detach()
