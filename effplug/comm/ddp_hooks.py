"""The DDP communication-hook adapter: one function that lets any compressor serve raw DDP, Lightning and HF."""

import torch

from effplug.comm.base import GradientCompressor
from effplug.comm.registry import make_compressor


def comm_hook(compressor: GradientCompressor, bucket) -> torch.futures.Future[torch.Tensor]:  # DDP checks this
    """``DistributedDataParallel.register_comm_hook(compressor, comm_hook)``: average ``bucket`` compressed."""
    return compressor.hook(bucket)


def register(model: torch.nn.parallel.DistributedDataParallel, compressor: "str | GradientCompressor" = "topk",
             **options) -> GradientCompressor:
    """Register compressed gradient averaging on a DDP model; returns the compressor (meter, state_dict).

    Works on any DDP wrapper, e.g. ``accelerator.prepare(model)`` or an HF Trainer's ``model_wrapped``. Call it
    before the first backward (a DDP rule); a hook can be registered only once per model.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(f"register() needs a DistributedDataParallel model, got {type(model).__name__}; wrap it "
                        "first (DistributedDataParallel(model), accelerator.prepare(model)) or, in one process, "
                        "train without a compressor")
    compressor = make_compressor(compressor, **options)
    compressor.bind(model.module, model.process_group)
    model.register_comm_hook(compressor, comm_hook)
    return compressor
