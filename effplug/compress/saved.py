"""``SavedActivation``: what the pack hook hands autograd in place of a saved tensor, and the version guard
that raises as autograd would when the tensor was modified in place after it was saved."""

from __future__ import annotations

import weakref

import torch

from effplug.sizes import tensor_nbytes


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _covers_storage(t: torch.Tensor) -> bool:
    """``t`` is a dense, non-overlapping view of its whole storage (so its memory order is the storage's)."""
    return (t.storage_offset() == 0 and tensor_nbytes(t) == t.untyped_storage().nbytes()
            and _memory_order(t) is not None)


def _memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """A permutation ``p`` with ``t.permute(p)`` contiguous, or None when ``t`` overlaps or has gaps."""
    order = tuple(sorted(range(t.ndim), key=lambda d: (-t.stride(d), -t.shape[d])))
    return order if t.permute(order).is_contiguous() else None


class SavedActivation:
    """What the pack hook returns: a payload (or the exact tensor) plus what unpack needs to restore it."""

    __slots__ = (
        "payload", "exact", "shape", "dtype", "order", "version", "ref", "base_ref", "slot", "modified", "__weakref__"
    )

    def __init__(self, t: torch.Tensor, slot: int = -1):
        self.payload = None
        self.exact = None
        self.shape, self.dtype, self.order, self.slot = t.shape, t.dtype, None, slot
        self.version = t._version
        self.modified = None  # the version seen at the end of the forward, when it had already changed
        self.ref = weakref.ref(t)
        self.base_ref = weakref.ref(t._base) if t._base is not None else None

    def alias(self, t: torch.Tensor) -> SavedActivation:
        """The same payload for another dense view ``t`` of the same whole storage (its own shape and order)."""
        other = SavedActivation(t, self.slot)
        other.payload, other.order = self.payload, _memory_order(t)
        return other

    def current_version(self) -> int | None:
        for ref in (self.ref, self.base_ref):
            live = ref() if ref is not None else None
            if live is not None:
                return live._version
        return None

    def note_forward_end(self) -> None:
        version = self.current_version()
        if version is not None and version != self.version:
            self.modified = version

    def check_version(self) -> None:
        version = self.current_version()
        version = self.modified if version is None or version == self.version else version
        if version is not None and version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: a saved {tuple(self.shape)} {self.dtype} tensor is at version {version}; "
                f"expected version {self.version} (effplug.compress detected this through the version counter). "
                "Clone the tensor before modifying it in place."
            )
