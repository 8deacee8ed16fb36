"""The Lightning door to ``effplug.fused``: ``Trainer(callbacks=[FusedKernels()])`` patches the module's
supported blocks in ``setup()``, before the optimizer exists (the patch adds no parameters)."""

from __future__ import annotations

from effplug._optional import require
from effplug.fused import apply_fused_kernels
from effplug.options import checks_keywords

pl = require("pytorch_lightning", extra="lightning")


@checks_keywords
class FusedKernels(pl.Callback):
    """Each op is ``None`` (where the model has it), ``True`` (required) or ``False``; see
    ``effplug.fused.apply_fused_kernels``."""

    def __init__(self, bias_dropout_residual: bool | None = None, softmax: bool | None = None,
                 layer_norm: bool | None = None, gelu: bool | None = None, rms_norm: bool | None = None,
                 swiglu: bool | None = None, rope: bool | None = None, cross_entropy: bool | None = None,
                 seed: int | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0):
        self.options = dict(bias_dropout_residual=bias_dropout_residual, softmax=softmax, layer_norm=layer_norm,
                            gelu=gelu, rms_norm=rms_norm, swiglu=swiglu, rope=rope, cross_entropy=cross_entropy,
                            seed=seed, label_smoothing=label_smoothing, z_loss=z_loss)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not hasattr(pl_module, "_effplug_fused"):
            apply_fused_kernels(pl_module, **self.options)
            pl_module._effplug_fused = True
