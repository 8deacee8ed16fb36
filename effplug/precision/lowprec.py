"""``LUQPrecision`` and ``LNSPrecision``: Lightning precision plugins over ``effplug.quant.luq`` / ``.lns``.

``Trainer(plugins=[LUQPrecision()])``. Each swaps layers in ``convert_module`` (before the optimizer is
built) and calls ``super()`` in every hook it overrides, so callback hooks still fire. Lightning allows one
precision plugin per Trainer: these do not combine with ``DeepSpeedPrecision`` (use the HF/plain-loop
functions ``prepare_luq`` / ``prepare_lns`` there).
"""

from __future__ import annotations

from effplug._optional import require
from effplug.options import checks_keywords
from effplug.quant.lns import prepare_lns
from effplug.quant.luq import LUQConfig, load_luq_state_dict, luq_state_dict, prepare_luq, set_luq_enabled

require("pytorch_lightning", extra="lightning")
from pytorch_lightning.plugins.precision import Precision  # noqa: E402


@checks_keywords
class LUQPrecision(Precision):
    """4-bit forward and backward (LUQ). ``high_precision_steps``: the last N optimizer steps run in full
    precision (LUQ's fine-tune phase), counted from ``trainer.estimated_stepping_batches``."""

    precision = "32-true"

    def __init__(self, bits: int = 4, smp: int = 1, high_precision_steps: int = 0, keep_first_last: bool = False,
                 exclude: str | list[str] | None = None, seed: int = 0):
        super().__init__()
        if high_precision_steps < 0:
            raise ValueError(f"high_precision_steps={high_precision_steps!r} must be >= 0")
        self.config = LUQConfig(bits=bits, smp=smp, keep_first_last=keep_first_last, exclude=exclude or (),
                                seed=seed)
        self.high_precision_steps = high_precision_steps
        self.module = None
        self._pending_seeds = None
        self.full_precision = False

    def convert_module(self, module):
        module = super().convert_module(module)
        self.module = prepare_luq(module, self.config, persistent_seeds=False)  # Lightning loads weights first
        if self._pending_seeds is not None:
            load_luq_state_dict(self.module, self._pending_seeds)
            self._pending_seeds = None
        return module

    def state_dict(self) -> dict:
        return {"seeds": luq_state_dict(self.module)} if self.module is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        seeds = state_dict.get("seeds")
        if seeds is None:
            return
        if self.module is None:
            self._pending_seeds = seeds
        else:
            load_luq_state_dict(self.module, seeds)

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        self._maybe_switch_to_full_precision(model)
        return super().optimizer_step(optimizer, model, closure, **kwargs)

    def _maybe_switch_to_full_precision(self, model) -> None:
        trainer = getattr(model, "_trainer", None)
        if not self.high_precision_steps or trainer is None or self.full_precision:
            return
        if trainer.global_step >= int(trainer.estimated_stepping_batches) - self.high_precision_steps:
            set_luq_enabled(self.module, False)
            self.full_precision = True


@checks_keywords
class LNSPrecision(Precision):
    """LNS weights (and optionally layer inputs and output gradients); pair with ``effplug.optim.LNSMadam``."""

    precision = "32-true"

    def __init__(self, bits: int = 8, gamma: int = 8, weights: bool = True, activations: bool = False,
                 gradients: bool = False, exclude: str | list[str] | None = None):
        super().__init__()
        from effplug.quant.lns import LNSConfig

        # validated now, before the Trainer runs
        self.config = LNSConfig(bits=bits, gamma=gamma, weights=weights, activations=activations,
                                gradients=gradients, exclude=exclude or ())

    def convert_module(self, module):
        module = super().convert_module(module)
        return prepare_lns(module, self.config)
