"""Lightning strategies. Importing this package (or ``effplug.callbacks`` / ``effplug.precision``) registers the
strategy names ``ddp_topk``, ``ddp_natural``, ``ddp_cgx``, ``ddp_powersgd`` (gradient compression), ``zero1``,
``zero2``, ``zero3``, ``zero3_offload`` (DeepSpeed, CPU too), ``fsdp2`` and ``pipeline_gpipe``,
``pipeline_1f1b``, ``pipeline_chimera``. Needs pytorch-lightning."""

from pytorch_lightning.strategies import StrategyRegistry

from effplug.strategies.compressed_ddp import STRATEGY_NAMES, CompressedDDPStrategy
from effplug.strategies.names import install_suggestions, suggest_strategy
from effplug.strategies.pipeline import PipelineStrategy
from effplug.strategies.zero import ZERO_NAMES, FSDP2Strategy, ZeroStrategy, shard_by_layer

CompressedDDPStrategy.register_strategies(StrategyRegistry)
ZeroStrategy.register_strategies(StrategyRegistry)
FSDP2Strategy.register_strategies(StrategyRegistry)
PipelineStrategy.register_strategies(StrategyRegistry)
install_suggestions(StrategyRegistry)  # "did you mean 'ddp_topk'?" for strategy="ddp_top_k"

__all__ = ["STRATEGY_NAMES", "ZERO_NAMES", "CompressedDDPStrategy", "FSDP2Strategy", "PipelineStrategy", "ZeroStrategy",
           "shard_by_layer", "suggest_strategy"]
