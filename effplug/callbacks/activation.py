"""``ActivationCompression``: the Lightning door to ``effplug.compress``."""

from __future__ import annotations

from effplug._optional import require
from effplug.callbacks._engine_state import EngineStateMixin
from effplug.compress import ActivationCompressor, CompressionConfig
from effplug.options import build_config

pl = require("pytorch_lightning", extra="lightning")


class ActivationCompression(EngineStateMixin, pl.Callback):
    """Store the activations your LightningModule saves for backward in 1-8 bits.

    ``Trainer(callbacks=[ActivationCompression(method="gact", bits=2)])``. The engine attaches to the
    LightningModule in ``setup``; the loss computed in ``training_step`` stays exact. GACT/COMET calibrate
    from the step's own loss in ``on_before_backward``. Its state rides in the Lightning checkpoint.
    """

    def __init__(self, method: str = "actnn", bits: float | None = None, config: CompressionConfig | None = None,
                 log_stats: bool = True, **kwargs):
        if config is None:
            kwargs.update(method=method, bits=bits)
        elif bits is not None or method != "actnn":
            raise ValueError("ActivationCompression: pass either config= or method=/bits=, not both "
                             f"(got config={config!r} and method={method!r}, bits={bits!r})")
        self.config = build_config(CompressionConfig, "ActivationCompression", config, shorthand="method", **kwargs)
        self.log_stats = log_stats
        self.engine: ActivationCompressor | None = None
        self._pending_state: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.config.checkpoint and trainer.world_size > 1:
            raise ValueError("ActivationCompression(checkpoint=True) is not supported under DDP yet: its reentrant "
                             "checkpoint marks parameters ready twice. Use checkpoint=False, with your own "
                             "gradient checkpointing if you need it")
        if stage == "fit" and self.engine is None:
            self.engine = ActivationCompressor(pl_module, self.config).attach()
            self._restore_pending_state()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.engine is not None:
            self.engine.detach()
            self.engine = None
        super().teardown(trainer, pl_module, stage)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        super().on_before_backward(trainer, pl_module, loss)
        if self.engine is not None:
            self.engine.calibrate(loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.log_stats and self.engine is not None and self.engine.last_report.original_bytes:
            stats = {f"act/{k}": float(v) for k, v in self.engine.summary().items()}
            pl_module.log_dict(stats, on_step=True, on_epoch=False, batch_size=1)

