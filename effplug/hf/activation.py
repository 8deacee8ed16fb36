"""HF doors to ``effplug.compress``: a ``TrainerCallback`` and ``EffTrainer``.

The callback attaches the engine to the model in ``on_train_begin`` and writes its state next to each
checkpoint; on resume it reads it back. A callback never sees the loss before ``backward``, so GACT's
sensitivities and COMET's bounds need ``EffTrainer``, which calibrates inside ``compute_loss``; with the
plain ``Trainer`` those methods keep their starting allocation and say so once.
"""

from __future__ import annotations

import logging

from effplug._optional import require
from effplug.compress import ActivationCompressor, CompressionConfig
from effplug.hf._checkpoint import load_state, save_state
from effplug.hf._metrics import MetricsCallback
from effplug.options import build_config

transformers = require("transformers", extra="hf")
log = logging.getLogger("effplug.hf")

STATE_FILE = "effplug_activation_compression.pt"


class ActivationCompressionCallback(MetricsCallback):
    """``Trainer(callbacks=[ActivationCompressionCallback(method="actnn", bits=4)])``."""

    def __init__(self, method: str = "actnn", bits: float | None = None, config: CompressionConfig | None = None, **kwargs):
        if config is None:
            kwargs.update(method=method, bits=bits)
        self.config = build_config(CompressionConfig, "ActivationCompressionCallback", config, shorthand="method", **kwargs)
        self.engine: ActivationCompressor | None = None
        self.can_calibrate = False  # EffTrainer sets it: it sees the loss before backward

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("ActivationCompressionCallback needs the model; use it with transformers.Trainer")
        self.engine = ActivationCompressor(model, self.config).attach()
        self.engine.calibration_enabled = self.can_calibrate
        if self.engine.method.needs_calibration and not self.can_calibrate:
            log.warning(
                "method=%r calibrates from the loss before backward, which a TrainerCallback cannot see; "
                "it keeps its starting setting. Use effplug.hf.EffTrainer to calibrate.", self.config.method
            )
        saved = load_state(args, state, STATE_FILE, "activation compression")
        if saved is not None:
            self.engine.load_state_dict(saved)

    def on_save(self, args, state, control, **kwargs):
        if self.engine is not None and state.is_world_process_zero:
            save_state(args, state, STATE_FILE, self.engine.state_dict())

    def metrics(self) -> dict:
        if self.engine is None or not self.engine.last_report.original_bytes:
            return {}
        return {f"act_{k}": v for k, v in self.engine.summary().items()}

    def on_train_end(self, args, state, control, **kwargs):
        if self.engine is not None:
            self.engine.detach()
