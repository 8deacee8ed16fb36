"""What the multi-process door workers share: each is launched once per rank by ``conftest.run_door_worker``
(torchrun-style environment, the output folder as its argument) and leaves ``<out>/rank<r>.json``."""

import json
import os
import sys
from pathlib import Path

import torch


def run_phases(*phases) -> None:
    """Run ``phase(out, rank) -> dict`` in order and write their merged results for this rank."""
    out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    torch.set_num_threads(1)  # two ranks share two cores
    result = {}
    for phase in phases:
        result.update(phase(out, rank))
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Tear the group down together: a rank that exits while its peer's gloo threads still hold the pair aborts
    # in a C++ destructor ("terminate called without an active exception").
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
