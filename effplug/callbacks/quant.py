"""Lightning doors to ``effplug.quant``: ``QuantizationAwareTraining`` and ``Binarization``.

Both swap layers in ``setup()`` (before ``configure_optimizers``, so learned step sizes are optimized) and
keep their state in the Lightning checkpoint; both work with ``class_path`` in LightningCLI.
"""

from __future__ import annotations

import copy

from effplug._optional import require
from effplug.callbacks._engine_state import EngineStateMixin
from effplug.options import checks_keywords
from effplug.quant import QATConfig, multi_bit_loss, quantize_model, quantized_layers
from effplug.quant import binary as _binary
from effplug.state import checksum, require_same_config, seal, unseal

pl = require("pytorch_lightning", extra="lightning")


def _loss_of(output):
    return output["loss"] if isinstance(output, dict) else output


@checks_keywords
class QuantizationAwareTraining(pl.Callback):
    """Fake-quantize weights and layer inputs while training: ``Trainer(callbacks=[QuantizationAwareTraining(
    weight_bits=4, act_bits=4, weight_estimator="lsq")])``, or pass ``config=QATConfig(...)``.

    With ``bits="auto", budget_bits=4.0`` the per-layer weight bits are searched (HAWQ trace x MSE) on
    ``calibration_batches`` training batches before the layers are swapped.
    With ``bit_widths=[2, 3, 4, 8]`` (once-QAT) each ``training_step`` is run once per width and the
    losses are summed (the paper's multi-objective loss); ``effplug.quant.set_bits(model, b)`` picks a
    width afterwards. Learned scales and observer ranges are module state: the checkpoint carries them.
    """

    def __init__(self, weight_bits: int = 4, act_bits: int | None = 8, weight_estimator: str = "octav",
                 act_estimator: str = "minmax", backend: str = "generic", per_channel: bool | None = None,
                 first_last_bits: int | None = 8, exclude: str | list[str] | None = None,
                 bits: dict | str | None = None, budget_bits: float | None = None, budget_bytes: int | None = None,
                 search_bits: tuple = (2, 3, 4, 8), search_method: str = "hessian",
                 bit_widths: list[int] | None = None, quantize_embeddings: bool = False,
                 config: QATConfig | None = None, log_stats: bool = True, calibration_batches: int = 2):
        self.config = config if config is not None else QATConfig(
            weight_bits=weight_bits, act_bits=act_bits, weight_estimator=weight_estimator,
            act_estimator=act_estimator, backend=backend, per_channel=per_channel, first_last_bits=first_last_bits,
            exclude=exclude or (), bits=bits if bits == "auto" else dict(bits or {}), budget_bits=budget_bits,
            budget_bytes=budget_bytes, search_bits=tuple(search_bits), search_method=search_method,
            bit_widths=tuple(bit_widths) if bit_widths else None, quantize_embeddings=quantize_embeddings,
        )
        self.log_stats = log_stats
        self.calibration_batches = calibration_batches
        self._original_step = None
        self.chosen_bits: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not quantized_layers(pl_module):  # every stage: a test/predict run loads quantized weights too
            losses = _calibration_losses(trainer, pl_module, self.calibration_batches) \
                if self.config.bits == "auto" else None
            quantize_model(pl_module, self.config, sensitivity_losses=losses)
            search = getattr(pl_module, "_effplug_bit_search", None)
            self.chosen_bits = dict(search.bits) if search is not None else None
        if self.config.bit_widths is not None and stage == "fit" and self._original_step is None:
            self._wrap_training_step(pl_module)

    def _wrap_training_step(self, pl_module) -> None:
        original = self._original_step = pl_module.training_step
        self._step_was_patched = "training_step" in pl_module.__dict__  # someone else's instance override
        callback = self

        def training_step(*args, **kwargs):
            total, per_width = multi_bit_loss(pl_module, lambda: _loss_of(original(*args, **kwargs)))
            if callback.log_stats:
                pl_module.log_dict({f"qat/loss_{b}bit": v for b, v in per_width.items()}, on_step=True,
                                   on_epoch=False, batch_size=1)
            return total

        pl_module.training_step = training_step

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._original_step is not None:
            if self._step_was_patched:
                pl_module.training_step = self._original_step
            else:
                del pl_module.training_step  # the class method shows through again
            self._original_step = None
        super().teardown(trainer, pl_module, stage)

    # The state key is the class name (Lightning's default), not the settings: a resume under other settings
    # must find the old state and refuse, not miss it and train on silently.
    def state_dict(self) -> dict:
        state = {"config": _config_dict(self.config)}
        if self.chosen_bits is not None:
            state["bits"] = dict(self.chosen_bits)  # bits='auto': what the search chose, checked on resume
        return seal(state)

    def load_state_dict(self, state_dict: dict) -> None:
        saved = unseal(state_dict, "QuantizationAwareTraining").get("config")
        if saved:
            require_same_config("QuantizationAwareTraining", saved, _config_dict(self.config))
        chosen = unseal(state_dict, "QuantizationAwareTraining").get("bits")
        if chosen and self.chosen_bits is not None and chosen != self.chosen_bits:
            raise ValueError(f"bits='auto' chose {self.chosen_bits} for this run but the checkpoint was trained with "
                             f"{chosen}; resume with QATConfig(bits={chosen!r}) to keep the checkpoint's widths")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint[QUANTIZER_CHECKSUM] = checksum(_quantizer_entries(checkpoint.get("state_dict", {})))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        expected = checkpoint.get(QUANTIZER_CHECKSUM)
        if expected is not None and checksum(_quantizer_entries(checkpoint.get("state_dict", {}))) != expected:
            raise ValueError("the quantizer ranges and learned scales in this checkpoint fail their checksum: the "
                             "file was corrupted after it was saved. Resume from an earlier checkpoint.")


QUANTIZER_CHECKSUM = "effplug_qat_crc32"


def _calibration_losses(trainer, pl_module, count: int) -> list:
    """``count`` training batches as loss closures over ``training_step`` (``self.log`` muted: no loop yet)."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    source = getattr(trainer.fit_loop, "_data_source", None)
    loader = source.dataloader() if source is not None and source.is_defined() else None
    if loader is None:
        raise ValueError("QATConfig(bits='auto') calibrates on training batches, but this Trainer has no "
                         "train_dataloader at setup; pass train_dataloaders to fit() or set bits explicitly")
    batches = []
    for i, batch in enumerate(loader):
        if i >= count:
            break
        batches.append(move_data_to_device(batch, pl_module.device))

    def loss_of(batch, index):
        def closure():
            log, log_dict = pl_module.log, pl_module.log_dict
            pl_module.log = pl_module.log_dict = lambda *a, **k: None
            try:
                return _loss_of(pl_module.training_step(batch, index))
            finally:
                pl_module.log, pl_module.log_dict = log, log_dict
        return closure

    return [loss_of(b, i) for i, b in enumerate(batches)]


def _config_dict(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}


def _quantizer_entries(state_dict: dict) -> dict:
    """The model state that QAT owns: every fake quantizer's ranges, learned steps and flags."""
    return {k: v for k, v in state_dict.items() if ".weight_quant." in f".{k}" or ".act_quant." in f".{k}"}


@checks_keywords
class Binarization(EngineStateMixin, pl.Callback):
    """DIR-Net binarization: ``Trainer(callbacks=[Binarization()])`` on a model trained in float.

    ``setup`` keeps a frozen float copy as the RBD teacher, binarizes the inner layers and runs DTE's
    schedule over ``trainer.estimated_stepping_batches``. ``method="sign_ste"`` is the plain BNN baseline.
    """

    def __init__(self, method: str = "dirnet", distill_weight: float = 1.0, keep_first_last: bool = True,
                 binarize_activations: bool = True, t_min: float = 0.1, t_max: float = 10.0,
                 exclude: str | list[str] | None = None, config: _binary.BinarizationConfig | None = None,
                 log_stats: bool = True):
        self.config = config if config is not None else _binary.BinarizationConfig(
            method=method, distill_weight=distill_weight, keep_first_last=keep_first_last,
            binarize_activations=binarize_activations, t_min=t_min, t_max=t_max, exclude=exclude or ())
        self.log_stats = log_stats
        self.engine: _binary.Binarizer | None = None
        self._pending_state: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.engine is not None:
            return
        trainer_ref = pl_module._trainer
        pl_module._trainer = None  # the teacher copy must not deep-copy the Trainer
        try:
            teacher = copy.deepcopy(pl_module) if self.config.method == "dirnet" and self.config.distill_weight else None
        finally:
            pl_module._trainer = trainer_ref
        self.engine = _binary.Binarizer(pl_module, self.config, teacher=teacher)
        self._restore_pending_state()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        total = max(int(trainer.estimated_stepping_batches), 1)
        self.engine.set_progress(trainer.global_step / total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.log_stats and self.engine is not None:
            pl_module.log_dict({"bin/distill_loss": self.engine.last_distill_loss, "bin/t": self.engine.t},
                               on_step=True, on_epoch=False, batch_size=1)
