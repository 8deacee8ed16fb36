"""The Lightning door to ``effplug.sparse.pruning``: ``Trainer(callbacks=[Pruning(sparsity=0.8,
pattern="vector", schedule="cubic", end_step=1000)])``. The masks update at the start of a training batch
when the schedule says so, are re-applied after every optimizer step, and ride in the checkpoint."""

from __future__ import annotations

from effplug._optional import require
from effplug.callbacks._engine_state import EngineStateMixin
from effplug.options import checks_keywords
from effplug.sparse.pruning import Pruner, PruningConfig

pl = require("pytorch_lightning", extra="lightning")


@checks_keywords
class Pruning(EngineStateMixin, pl.Callback):
    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", vector: int = 4,
                 schedule: str = "one-shot", start_step: int = 0, end_step: int | None = None, frequency: int = 10,
                 initial_sparsity: float = 0.0, exclude: str | list[str] | None = None, keep_last: bool = True,
                 config: PruningConfig | None = None, log_stats: bool = True):
        self.config = config if config is not None else PruningConfig(
            sparsity=sparsity, pattern=pattern, vector=vector, schedule=schedule, start_step=start_step,
            end_step=end_step, frequency=frequency, initial_sparsity=initial_sparsity,
            exclude=tuple([exclude] if isinstance(exclude, str) else exclude or ()), keep_last=keep_last)
        self.log_stats = log_stats
        self.engine: Pruner | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.engine is None:
            self.engine = Pruner(pl_module, self.config)
        self._restore_pending_state()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._restore_pending_state()  # a checkpoint loaded after setup
        self.engine.update(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.engine.apply()
        if self.log_stats:
            pl_module.log("pruning/sparsity", self.engine.sparsity(), on_step=True, on_epoch=False, batch_size=1)
