"""The codec contract (DESIGN.md): ``encode(t, key=None) -> payload``, ``decode(payload) -> tensor``,
``nbytes(payload)`` exact, ``to_bytes``/``from_bytes`` for the wire, ``state_dict``/``load_state_dict`` for
residuals and seed streams. And the one byte count every meter uses, :func:`tensor_nbytes`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from effplug.sizes import tensor_nbytes  # noqa: F401  (re-exported: the codec contract's byte count)


@runtime_checkable
class Codec(Protocol):
    def encode(self, tensor: torch.Tensor, key: str | None = None) -> Any: ...

    def decode(self, payload: Any) -> torch.Tensor: ...

    def nbytes(self, payload: Any) -> int: ...


class KeyedSeeds:
    """One :class:`SeedStream` child per key (a parameter or module name), spawned on first use and
    checkpointed by key, so a resumed or reordered run draws exactly what an uninterrupted one would."""

    def __init__(self, seed: int | None = None, scope: str = ""):
        from effplug.codecs.seeds import SeedStream

        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None (None follows the framework's seed); got {seed!r}")
        self._seed, self.scope = seed, scope
        self._root: SeedStream | None = None
        self.streams: dict[str, SeedStream] = {}

    def set_scope(self, scope: str) -> None:
        """Name the root's child every key spawns from (a rank); fixed once the first draw was made."""
        if scope == self.scope:
            return
        if self._root is not None:
            raise RuntimeError(f"seed streams already drawn under scope {self.scope!r}; cannot move to {scope!r}")
        self.scope = scope

    @property
    def root(self):
        from effplug.codecs.seeds import SeedStream

        if self._root is None:  # resolved on first use: seed=None follows the framework seed set by then
            self._root = SeedStream(self._seed)
            if self.scope:
                self._root = self._root.spawn(self.scope)
        return self._root

    def stream(self, key: str | None):
        if key is None:
            return self.root
        if key not in self.streams:
            self.streams[key] = self.root.spawn(key)
        return self.streams[key]

    def draw(self, key: str | None = None) -> int:
        return self.stream(key).draw()

    def state_dict(self) -> dict:
        root = self._root.state_dict() if self._root is not None else {}  # not drawn yet: nothing to pin
        return {"scope": self.scope, "root": root, "streams": {k: s.state_dict() for k, s in self.streams.items()}}

    def load_state_dict(self, state: dict) -> None:
        from effplug.codecs.seeds import SeedStream

        self.scope = state.get("scope", self.scope)
        self._root = SeedStream.from_state(state["root"]) if state.get("root") else None
        self.streams = {k: SeedStream.from_state(s) for k, s in state.get("streams", {}).items()}
