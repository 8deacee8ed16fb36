"""``build_pipeline``: one call from a model to this rank's runner, for every schedule.

Every door (the Lightning strategy, the HF recipe, plain loops) calls it and then ``runner.run(inputs,
targets, sample_ids)`` with the whole batch on every rank; the schedule is a name, not a branch at the door.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch

from effplug.parallel.pipeline.split import StageList

log = logging.getLogger("effplug.parallel")
SCHEDULES = ("gpipe", "1f1b", "chimera")


def check_pipeline_settings(schedule: str, acsgd=None) -> None:
    """Raise, saying what to do, for a schedule name or combination the builder cannot run."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULES}")
    if acsgd is not None and schedule == "chimera":
        raise ValueError("acsgd works with the gpipe and 1f1b schedules (pipeline_gpipe and pipeline_1f1b); Chimera's two opposite pipelines are not "
                         "wired for it yet")


def build_pipeline(model, split: Callable, schedule: str, microbatches: int, loss_fn, *, rank: int, world: int,
                   device: torch.device | str = "cpu", acsgd=None):
    """``(runner, stages)``: this rank's runner and its stage module(s), a ``StageList`` the optimizer covers.

    ``split(model)`` gives one stage per rank. Chimera runs a second replica on a deep copy (stage
    ``world - 1 - rank``); ``acsgd`` (an ``ACSGDConfig``) works with GPipe and 1F1B. A tie between the
    embedding and the head (``stage.tied_parameter``) is kept in sync under GPipe/1F1B.
    """
    check_pipeline_settings(schedule, acsgd)
    stages = split(model)
    if len(stages) != world:
        raise ValueError(f"{len(stages)} stages for {world} ranks: give {world - 1} split points")
    tied = any(hasattr(stage, "tied_parameter") for stage in stages)
    if schedule == "chimera":
        from effplug.parallel.pipeline.chimera import ChimeraRunner

        if tied:
            log.warning("pipeline_chimera: the embedding/head tie is not kept across stages (each copy trains "
                        "on its own gradient); use pipeline_1f1b or pipeline_gpipe for tied models")
        up_stages = split(copy.deepcopy(model))
        mine = StageList([stages[rank], up_stages[world - 1 - rank]])
        return ChimeraRunner(mine[0], mine[1], microbatches, loss_fn, device=device), mine
    from effplug.parallel.pipeline.runner import PipelineRunner

    mine = StageList([stages[rank]])
    runner = PipelineRunner(mine[0], rank, world, schedule=schedule, microbatches=microbatches, loss_fn=loss_fn,
                            device=device, sync_tied=tied, acsgd=acsgd)
    return runner, mine
