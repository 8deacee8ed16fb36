"""Shared by the Lightning callbacks that own an engine with checkpointed state."""

from __future__ import annotations

from effplug.state import seal, unseal


class EngineStateMixin:
    """Checkpoint state of a callback's engine; a state loaded before the engine exists waits for it."""

    engine = None
    _pending_state: dict | None = None

    def state_dict(self) -> dict:
        if self.engine is not None:
            return seal(self.engine.state_dict())
        return seal(self._pending_state) if self._pending_state else {}  # a detached engine leaves nothing

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = unseal(state_dict, type(self).__name__)
        if not state_dict:
            return
        if self.engine is not None:
            self.engine.load_state_dict(state_dict)
        else:
            self._pending_state = state_dict

    def _restore_pending_state(self) -> None:
        if self.engine is not None and self._pending_state is not None:
            self.engine.load_state_dict(self._pending_state)
            self._pending_state = None
