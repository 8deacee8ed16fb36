"""``EffTrainer``: ``transformers.Trainer`` plus the effplug doors that need to see or shape the loss."""

from __future__ import annotations

from effplug._optional import require
from effplug.compress import CompressionConfig
from effplug.hf._metrics import put_first
from effplug.hf.activation import ActivationCompressionCallback
from effplug.hf.comm import compress_gradients
from effplug.hf.quant import apply_quantization
from effplug.options import build_config, checks_keywords
from effplug.quant import QATConfig, multi_bit_loss

transformers = require("transformers", extra="hf")
ParallelMode = require("transformers.training_args", extra="hf").ParallelMode


class EffTrainerMixin:
    """The effplug doors that need to see or shape the loss, for any ``transformers.Trainer`` subclass:
    ``class MyTrainer(EffTrainerMixin, MyBaseTrainer)`` (mixin first). ``EffTrainer`` and
    ``EffSeq2SeqTrainer`` are the two built in.

    - ``activation_compression``: a ``CompressionConfig`` (or dict); GACT/COMET calibrate from the loss here.
    - ``quantization``: a ``QATConfig`` (or dict); the model is converted before the optimizer exists. With
      ``bit_widths`` (once-QAT) the loss is the sum over widths (``effplug.quant.multi_bit_loss``).
    - ``comm``: a gradient compressor for DDP: a name (``"topk"``), a dict ``{"compressor": "cgx", "bits": 4}``
      or a ``GradientCompressor``; see ``effplug.hf.compress_gradients``.
    """

    def __init__(self, *args, activation_compression: CompressionConfig | dict | None = None,
                 quantization: QATConfig | dict | None = None, comm=None, **kwargs):
        # validate before the Trainer does any work
        compression = None if activation_compression is None else build_config(
            CompressionConfig, "EffTrainer(activation_compression=...)", activation_compression, shorthand="method")
        self.quantization = None if quantization is None else build_config(
            QATConfig, "EffTrainer(quantization=...)", quantization)
        model = kwargs.get("model", args[0] if args else None)
        if self.quantization is not None:
            if model is None:
                raise ValueError("EffTrainer(quantization=...) needs the model passed to the constructor")
            if self.quantization.bits != "auto":
                apply_quantization(model, self.quantization)
        super().__init__(*args, **kwargs)
        if self.quantization is not None and self.quantization.bits == "auto":
            # the bit search calibrates on training batches, which exist once the Trainer is built; the
            # optimizer is created later, in train(), so it still covers every quantizer parameter
            apply_quantization(model, self.quantization, sensitivity_losses=self._calibration_losses(model))
        self.activation_callback = None
        if compression is not None:
            if compression.checkpoint and self.args.parallel_mode == ParallelMode.DISTRIBUTED:
                # the reentrant checkpoint marks parameters ready again in each block's recompute; DDP refuses it
                raise ValueError("EffTrainer(activation_compression={'checkpoint': True}) is not supported under "
                                 "DDP yet: its reentrant checkpoint marks parameters ready twice. Use "
                                 "checkpoint=False together with TrainingArguments(gradient_checkpointing=True)")
            self.activation_callback = ActivationCompressionCallback(config=compression)
            self.activation_callback.can_calibrate = True
            self.add_callback(self.activation_callback)
            put_first(self, self.activation_callback)
        self.last_width_losses: dict = {}
        self.comm_callback = None
        if comm is not None:
            options = dict(comm) if isinstance(comm, dict) else {"compressor": comm}
            self.comm_callback = compress_gradients(self, options.pop("compressor", "topk"), **options)

    def _calibration_losses(self, model, count: int = 2) -> list:
        if self.train_dataset is None:
            raise ValueError("EffTrainer(quantization=QATConfig(bits='auto')) calibrates on training batches; pass "
                             "train_dataset, or set bits explicitly")
        batches = []
        for i, batch in enumerate(self.get_train_dataloader()):
            if i >= count:
                break
            batches.append(self._prepare_inputs(batch))
        parent = super()
        return [lambda b=b: parent.compute_loss(model, b) for b in batches]

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.last_width_losses and "loss" in logs:
            # once-QAT's training loss is the sum of one loss per width (the paper's objective): say so
            logs["loss_is_sum_over_widths"] = len(self.last_width_losses)
            logs.update({f"qat_loss_{bits}bit": float(value) for bits, value in self.last_width_losses.items()})
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if self.quantization is not None and self.quantization.bit_widths is not None and model.training:
            outputs = {}

            def loss_at_width():
                loss, outputs["last"] = super(EffTrainerMixin, self).compute_loss(model, inputs, return_outputs=True,
                                                                                  **kwargs)
                return loss

            loss, per_width = multi_bit_loss(model, loss_at_width)
            self.last_width_losses = per_width
            result = (loss, outputs["last"]) if return_outputs else loss
        else:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        engine = self.activation_callback.engine if self.activation_callback is not None else None
        if engine is not None and engine.calibration_pending:
            engine.calibrate(result[0] if return_outputs else result)
        return result


@checks_keywords(also_from=transformers.Trainer.__init__)
class EffTrainer(EffTrainerMixin, transformers.Trainer):
    """``EffTrainer(model, args, ..., activation_compression=..., quantization=..., comm=...)``: see
    ``EffTrainerMixin``."""


@checks_keywords(also_from=transformers.Seq2SeqTrainer.__init__)
class EffSeq2SeqTrainer(EffTrainerMixin, transformers.Seq2SeqTrainer):
    """``Seq2SeqTrainer`` (T5, BART: ``predict_with_generate`` and generation settings) with effplug's doors."""
