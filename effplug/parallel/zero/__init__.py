"""ZeRO by configuration: a DeepSpeed config builder, the ZeRO paper's memory model and a planner.

``deepspeed_config(stage, ...)`` returns a plain dict for ``deepspeed.initialize``, Lightning's DeepSpeed
strategies (``effplug.strategies`` names ``zero1``/``zero2``/``zero3``/``zero3_offload``) and
``transformers.TrainingArguments(deepspeed=...)``. ``estimate_memory`` implements the model-state formulas of
Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models" (SC'20), Sec. 5.1 /
Fig. 1, with Ψ parameters, N data-parallel ranks and K bytes of optimizer state per parameter:

    stage 0 (DDP):  (2 + 2 + K) Ψ            = 16Ψ for mixed-precision Adam (K = 12)
    stage 1 (P_os): (2 + 2) Ψ + K Ψ / N       = 4Ψ + 12Ψ/N
    stage 2 (+g):   2Ψ + (2 + K) Ψ / N        = 2Ψ + 14Ψ/N
    stage 3 (+p):   (2 + 2 + K) Ψ / N         = 16Ψ/N

The 2-byte parameter and gradient terms are ``param_bytes`` / ``grad_bytes``; fp32 training is 4 / 4 / 12
(DeepSpeed keeps an fp32 master partition next to Adam's two moments either way).
"""

from __future__ import annotations

from effplug.parallel.zero.checkpoints import deepspeed_safe_globals, load_zero_file, plain_state_dict
from effplug.parallel.zero.config import OFFLOAD_CHOICES, STAGES, deepspeed_config
from effplug.parallel.zero.memory import STRATEGY_FOR_STAGE, MemoryEstimate, estimate_memory, format_plan, plan
from effplug.parallel.zero.meters import model_state_bytes

__all__ = ["OFFLOAD_CHOICES", "STAGES", "STRATEGY_FOR_STAGE", "MemoryEstimate", "deepspeed_config",
           "deepspeed_safe_globals", "estimate_memory", "format_plan", "load_zero_file", "model_state_bytes",
           "plain_state_dict", "plan"]
