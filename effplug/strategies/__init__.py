"""Lightning strategies. Importing this package (or ``effplug.callbacks``) registers the strategy names
``ddp_topk``, ``ddp_natural``, ``ddp_cgx`` and ``ddp_powersgd``. Needs pytorch-lightning."""

from pytorch_lightning.strategies import StrategyRegistry

from effplug.strategies.compressed_ddp import STRATEGY_NAMES, CompressedDDPStrategy

CompressedDDPStrategy.register_strategies(StrategyRegistry)

__all__ = ["STRATEGY_NAMES", "CompressedDDPStrategy"]
