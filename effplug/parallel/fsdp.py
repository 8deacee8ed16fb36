"""FSDP2 helpers that need no Lightning: the per-layer sharding the ``fsdp2`` strategy applies."""

from __future__ import annotations

import torch


def shard_by_layer(module: torch.nn.Module, mesh) -> torch.nn.Module:
    """``fully_shard`` the outermost submodules that directly own parameters, then the root.

    A module that owns parameters is sharded as one unit with everything below it: ``nn.MultiheadAttention``
    owns ``in_proj_weight`` and reads its child ``out_proj.weight`` without calling ``out_proj``, so sharding the
    child on its own would leave that weight sharded at use (and sharding parent then child overlaps meshes).
    Modules already sharded are left as they are.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    units = []
    for name, child in list(module.named_modules())[1:]:
        if any(name.startswith(unit + ".") for unit in units):
            continue  # inside a unit: its parameters go with it
        if isinstance(child, FSDPModule) or any(True for _ in child.parameters(recurse=False)):
            units.append(name)
    for name in units:
        child = module.get_submodule(name)
        if not isinstance(child, FSDPModule):
            fully_shard(child, mesh=mesh)
    if not isinstance(module, FSDPModule):
        fully_shard(module, mesh=mesh)
    return module
