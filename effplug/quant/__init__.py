"""Quantization-aware training: fake-quant modules, range estimators, model conversion, export.

::

    from effplug.quant import QATConfig, quantize_model
    quantize_model(model, QATConfig(weight_bits=4, act_bits=4, weight_estimator="octav"))
    # ... build the optimizer, train as usual ...
    state = export_quantized(model.eval())

Lightning: ``effplug.callbacks.QuantizationAwareTraining``; HF: ``effplug.hf.apply_quantization``.
"""

from __future__ import annotations

from effplug.quant.config import ACT_ESTIMATORS, WEIGHT_ESTIMATORS, QATConfig
from effplug.quant.convert import (
    plan_layers,
    quantize_model,
    quantized_layers,
    set_quantization_enabled,
    summary_table,
)
from effplug.quant.estimators import octav_clip
from effplug.quant.export import export_quantized, integer_model
from effplug.quant.fake_quantizer import FakeQuantize
from effplug.quant.nested import multi_bit_loss, set_bits
from effplug.quant.presets import PRESETS, BackendPreset

__all__ = [
    "ACT_ESTIMATORS", "PRESETS", "WEIGHT_ESTIMATORS", "BackendPreset", "FakeQuantize", "QATConfig",
    "export_quantized", "integer_model", "multi_bit_loss", "octav_clip", "plan_layers", "quantize_model",
    "quantized_layers", "set_bits", "set_quantization_enabled", "summary_table",
]
