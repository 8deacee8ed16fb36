"""How the HF doors' numbers reach ``trainer.state.log_history`` and every ``report_to`` logger.

``Trainer.log`` appends to ``log_history`` first and then calls ``on_log`` on every callback in order; the
reporting integrations are registered before user callbacks. So a door that only adds keys to ``logs`` in
``on_log`` reaches the console but neither the history nor the loggers. A :class:`MetricsCallback` moves
itself to the front of the callback list when the Trainer is built, and writes its keys into the history
entry just appended as well.
"""

from __future__ import annotations

import sys

from effplug._optional import require

transformers = require("transformers", extra="hf")


def _building_trainer():
    """The ``transformers.Trainer`` whose ``__init__`` is running (callbacks are not handed it)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate
        frame = frame.f_back
    return None


def put_first(trainer, callback) -> None:
    """Make ``callback`` the first to see ``on_log``, before the reporting integrations."""
    callbacks = trainer.callback_handler.callbacks
    if callback in callbacks:
        callbacks.remove(callback)
        callbacks.insert(0, callback)


class MetricsCallback(transformers.TrainerCallback):
    """Subclasses return their numbers from ``metrics()``; they reach the logs, the history and the loggers."""

    def metrics(self) -> dict:
        return {}

    def on_init_end(self, args, state, control, **kwargs):
        trainer = _building_trainer()
        if trainer is not None:
            put_first(trainer, self)

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = self.metrics()
        if logs is None or not values:
            return
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
