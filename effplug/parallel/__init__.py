"""Parallelism: ZeRO configuration and memory planning (``zero``). Framework-free; DeepSpeed is imported
only by the strategies that run it."""

from effplug.parallel.zero import MemoryEstimate, deepspeed_config, estimate_memory, plan

__all__ = ["MemoryEstimate", "deepspeed_config", "estimate_memory", "plan"]
