"""Parallelism, framework-free: ZeRO configuration and memory planning (``zero``), pipeline schedules and their
simulator (``schedules``), model splitting and the GPipe/1F1B runner (``pipeline``) and Chimera (``chimera``).
DeepSpeed and torch.distributed.pipelining are imported only by what runs them."""

from effplug.parallel.pipeline import PipelineRunner, split_decoder, split_gpt2, split_sequential
from effplug.parallel.schedules import chimera, gpipe, one_f_one_b, simulate
from effplug.parallel.zero import MemoryEstimate, deepspeed_config, estimate_memory, plan

__all__ = ["MemoryEstimate", "PipelineRunner", "chimera", "deepspeed_config", "estimate_memory", "gpipe",
           "one_f_one_b", "plan", "simulate", "split_decoder", "split_gpt2", "split_sequential"]
