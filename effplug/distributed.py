"""Small ``torch.distributed`` helpers the doors share."""

from __future__ import annotations


def gather_from_ranks(obj) -> list:
    """Every rank's ``obj``, in rank order (a collective: call it on all ranks); ``[obj]`` in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
