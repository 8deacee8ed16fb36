"""``SeedStream``: the one source of randomness for every stochastic codec and engine.

A stream draws ``seed, seed + 1, ...`` (each draw keys a Philox counter stream in ``effplug.kernels``), so
runs reproduce and no global RNG is advanced. ``spawn(key)`` gives an independent child stream for a rank,
a stage, a layer or a direction: its seed is a 64-bit hash of the parent's seed and the key, so children of
one parent, and the parent itself, draw from ranges that overlap with probability ~ draws / 2**63. Its
position is ``state_dict()``, two plain ints.
"""

from __future__ import annotations

import hashlib

from effplug.kernels.philox import SEED_LIMIT, resolve_seed


class SeedStream:
    """``draw()`` returns the next seed; ``spawn(key)`` a child stream; ``state_dict()`` its position."""

    def __init__(self, seed: int | None = None):
        self.seed = resolve_seed(seed)
        self.position = 0

    @property
    def next_seed(self) -> int:
        """The seed the next ``draw()`` returns (the name older checkpoints saved)."""
        return (self.seed + self.position) % SEED_LIMIT

    @next_seed.setter
    def next_seed(self, value: int) -> None:  # what code written before state_dict() did to resume a stream
        self.seed, self.position = int(value) % SEED_LIMIT, 0

    def draw(self) -> int:
        seed = self.next_seed
        self.position += 1
        return seed

    def spawn(self, key: str) -> SeedStream:
        """An independent child stream named ``key`` (the same key always gives the same child)."""
        if not isinstance(key, str):
            raise TypeError(f"spawn(key) takes a str naming the sub-stream (a rank, stage or layer); got {key!r}")
        digest = hashlib.blake2b(f"{self.seed}/{key}".encode(), digest_size=8).digest()
        return SeedStream(int.from_bytes(digest, "little") % SEED_LIMIT)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if "next_seed" in state:  # written by effplug before SeedStream kept its seed and position apart
            self.seed, self.position = int(state["next_seed"]) % SEED_LIMIT, 0
            return
        self.seed, self.position = int(state["seed"]), int(state["position"])

    @classmethod
    def from_state(cls, state: dict) -> SeedStream:
        stream = cls(0)
        stream.load_state_dict(state)
        return stream

    def __repr__(self) -> str:
        return f"SeedStream(seed={self.seed}, position={self.position})"
