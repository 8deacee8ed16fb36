"""The Lightning door to ``effplug.fused``: ``Trainer(callbacks=[FusedKernels()])`` patches the module's
supported blocks in ``setup()``, before the optimizer exists (the patch adds no parameters)."""

from __future__ import annotations

from effplug._optional import require
from effplug.fused import apply_fused_kernels

pl = require("pytorch_lightning", extra="lightning")


class FusedKernels(pl.Callback):
    def __init__(self, bias_dropout_residual: bool = True, seed: int | None = None):
        self.bias_dropout_residual, self.seed = bias_dropout_residual, seed

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not hasattr(pl_module, "_effplug_fused"):
            apply_fused_kernels(pl_module, bias_dropout_residual=self.bias_dropout_residual, seed=self.seed)
            pl_module._effplug_fused = True
