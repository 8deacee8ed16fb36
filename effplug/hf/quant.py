"""HF doors to ``effplug.quant``: ``apply_quantization`` before ``Trainer(...)``, or a callback.

The swap must happen before the Trainer builds its optimizer (in ``train()``) and before any wrapping
(DDP, DeepSpeed): ``on_init_end`` is the last callback event that qualifies. The model is not marked
``is_quantized`` (HF refuses to fine-tune models it thinks are quantized for inference).
"""

from __future__ import annotations

import torch

from effplug._optional import require
from effplug.hf._checkpoint import load_state, save_state
from effplug.hf._metrics import MetricsCallback
from effplug.options import build_config
from effplug.quant import QATConfig, quantize_model, quantized_layers
from effplug.quant import binary as _binary

transformers = require("transformers", extra="hf")

BINARIZATION_STATE_FILE = "effplug_binarization.pt"


def apply_quantization(model: torch.nn.Module, config: QATConfig | None = None, **kwargs) -> torch.nn.Module:
    """Convert ``model`` for QAT in place and return it: ``Trainer(model=apply_quantization(model, cfg), ...)``."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        raise ValueError("this model was loaded with an HF quantization_config (inference quantization); "
                         "QAT needs the float model: load it without quantization_config")
    return quantize_model(model, config, **kwargs)


class QuantizationCallback(transformers.TrainerCallback):
    """``Trainer(model, args, callbacks=[QuantizationCallback(QATConfig(...))])``: converts in ``on_init_end``."""

    def __init__(self, config: QATConfig | None = None, **kwargs):
        self.config = build_config(QATConfig, "QuantizationCallback", config, **kwargs)
        if self.config.bit_widths is not None:
            raise ValueError("once-QAT (bit_widths) runs the loss once per width; a callback cannot change the "
                             "loss, so use effplug.hf.EffTrainer(quantization=QATConfig(bit_widths=...))")

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("QuantizationCallback needs the model; use it with transformers.Trainer")
        if not quantized_layers(model):
            apply_quantization(model, self.config)


class BinarizationCallback(MetricsCallback):
    """DIR-Net binarization for the HF Trainer: binarizes in ``on_init_end``, runs DTE's schedule per step,
    and stores the RBD teacher and progress next to each checkpoint."""

    def __init__(self, config: _binary.BinarizationConfig | None = None, **kwargs):
        self.config = build_config(_binary.BinarizationConfig, "BinarizationCallback", config, **kwargs)
        self.engine: _binary.Binarizer | None = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        if model is None:
            raise ValueError("BinarizationCallback needs the model; use it with transformers.Trainer")
        if self.engine is None:
            self.engine = _binary.Binarizer(model, self.config)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = load_state(args, state, BINARIZATION_STATE_FILE, "binarization")
        if saved is not None:
            self.engine.load_state_dict(saved)

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine.set_progress(state.global_step / max(state.max_steps, 1))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_state(args, state, BINARIZATION_STATE_FILE, self.engine.state_dict())

    def metrics(self) -> dict:
        return {"bin_distill_loss": self.engine.last_distill_loss} if self.engine is not None else {}
