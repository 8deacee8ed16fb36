"""The HF door to ``effplug.sparse.pruning``: ``Trainer(..., callbacks=[PruningCallback(sparsity=0.8)])``.
Masks update at ``on_step_begin`` when the schedule says so, are re-applied at ``on_step_end`` (after the
optimizer step), and are saved next to each ``checkpoint-N``."""

from __future__ import annotations

from effplug._optional import require
from effplug.hf._checkpoint import load_state, save_state
from effplug.hf._metrics import MetricsCallback
from effplug.options import build_config
from effplug.sparse.pruning import Pruner, PruningConfig

transformers = require("transformers", extra="hf")

PRUNING_STATE_FILE = "effplug_pruning.pt"


class PruningCallback(MetricsCallback):
    def __init__(self, config: PruningConfig | None = None, **kwargs):
        if isinstance(kwargs.get("exclude"), list):
            kwargs["exclude"] = tuple(kwargs["exclude"])
        self.config = build_config(PruningConfig, "PruningCallback", config, **kwargs)
        self.engine: Pruner | None = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        if model is None:
            raise ValueError("PruningCallback needs the model; use it with transformers.Trainer")
        if self.engine is None:
            self.engine = Pruner(model, self.config)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = load_state(args, state, PRUNING_STATE_FILE, "pruning")
        if saved is not None:
            self.engine.load_state_dict(saved)

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.engine.apply()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_state(args, state, PRUNING_STATE_FILE, self.engine.state_dict())

    def metrics(self) -> dict:
        return {"pruning_sparsity": self.engine.sparsity()} if self.engine is not None else {}
