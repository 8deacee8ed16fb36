"""Pipeline parallelism on ``torch.distributed.pipelining``: model splitting, the GPipe / 1F1B runner, Chimera,
and AC-SGD between stages; ``build_pipeline`` gives any door its runner.

``split_sequential`` and ``split_decoder`` (HF GPT-2 and Llama-style LMs; stage classes per family in
``models/``) cut a model into stage modules; ``PipelineRunner`` wraps one rank's stage in torch's
``PipelineStage`` and runs ``ScheduleGPipe`` / ``Schedule1F1B``; ``ChimeraRunner`` runs Chimera's two
replicas. The action orders, simulator and Chimera's merged order live in ``effplug.parallel.schedules``.
"""

from effplug.parallel.pipeline.builder import SCHEDULES, build_pipeline
from effplug.parallel.pipeline.models.decoder import DecoderStage as _DecoderStage  # noqa: F401
from effplug.parallel.pipeline.models.decoder import _own_head  # noqa: F401
from effplug.parallel.pipeline.models.gpt2 import GPT2Stage as _GPT2Stage  # noqa: F401
from effplug.parallel.pipeline.models.llama import LlamaStage as _LlamaStage  # noqa: F401
from effplug.parallel.pipeline.runner import (
    SCHEDULE_NAMES,
    SUPPORTED_TORCH,
    PipelineRunner,
    require_pipelining_internals,
)
from effplug.parallel.pipeline.split import (  # noqa: F401
    StageList,
    _check_points,
    _decoder_layout,
    balanced_split_points,
    split_decoder,
    split_gpt2,
    split_sequential,
)

__all__ = ["SCHEDULES", "SCHEDULE_NAMES", "SUPPORTED_TORCH", "PipelineRunner", "StageList", "balanced_split_points",
           "build_pipeline", "require_pipelining_internals", "split_decoder", "split_gpt2", "split_sequential"]
