"""``tensor_nbytes``: the one byte count every payload, meter and report uses."""

from __future__ import annotations


def tensor_nbytes(t) -> int:
    """Bytes a tensor holds: ``numel * element_size``; 0 for None; an FSDP2 DTensor counts its local shard."""
    if t is None:
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()
