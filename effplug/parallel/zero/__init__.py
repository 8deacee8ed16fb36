"""ZeRO by configuration: a DeepSpeed config builder (``config``), the ZeRO paper's memory model and the planner
(``memory``), what a rank really holds (``meters``) and ZeRO checkpoint folders (``checkpoints``).

``deepspeed_config(stage, ...)`` returns a plain dict for ``deepspeed.initialize``, Lightning's DeepSpeed
strategies (``effplug.strategies`` names ``zero1``/``zero2``/``zero3``/``zero3_offload``) and
``transformers.TrainingArguments(deepspeed=...)``.
"""

from __future__ import annotations

from effplug.parallel.zero.checkpoints import deepspeed_safe_globals, load_zero_file, plain_state_dict
from effplug.parallel.zero.config import OFFLOAD_CHOICES, STAGES, deepspeed_config
from effplug.parallel.zero.memory import STRATEGY_FOR_STAGE, MemoryEstimate, estimate_memory, format_plan, plan
from effplug.parallel.zero.meters import model_state_bytes

__all__ = ["OFFLOAD_CHOICES", "STAGES", "STRATEGY_FOR_STAGE", "MemoryEstimate", "deepspeed_config",
           "deepspeed_safe_globals", "estimate_memory", "format_plan", "load_zero_file", "model_state_bytes",
           "plain_state_dict", "plan"]
