"""``CompressedDDPStrategy``: Lightning's DDP with an effplug gradient compressor as its communication hook."""

from __future__ import annotations

from typing import Any

from effplug._optional import require
from effplug.comm import COMPRESSORS, GradientCompressor, comm_hook, compressor_options, make_compressor
from effplug.distributed import gather_from_ranks
from effplug.options import check_options

require("pytorch_lightning", extra="lightning")

from pytorch_lightning.overrides.distributed import _register_ddp_comm_hook  # noqa: E402
from pytorch_lightning.strategies import DDPStrategy  # noqa: E402

CHECKPOINT_KEY = "effplug_comm"


def _ddp_strategy_options() -> set[str]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    own = set(inspect.signature(DDPStrategy.__init__).parameters) - {"self", "kwargs"}
    ddp = set(inspect.signature(DistributedDataParallel.__init__).parameters) - {"self", "module", "kwargs"}
    return own | ddp


class CompressedDDPStrategy(DDPStrategy):
    """DDP whose gradients are averaged by ``compressor`` (``"topk"``, ``"natural"``, ``"cgx"``, ``"powersgd"``).

    ``CompressedDDPStrategy("topk", ratio=0.01, find_unused_parameters=False)``: options the compressor takes
    go to it, the rest to ``DDPStrategy``. The strategy names ``ddp_topk``, ``ddp_natural``, ``ddp_cgx`` and
    ``ddp_powersgd`` build it with defaults. The hook is registered on every device (stock Lightning registers
    comm hooks only on CUDA). Each rank's compressor state (residuals, seed positions, PowerSGD memories) is
    gathered into the checkpoint under ``"effplug_comm"`` and handed back to its rank on resume.
    """

    strategy_name = "ddp_compressed"

    def __init__(self, compressor: str | GradientCompressor = "topk", *, ratio: float | None = None,
                 error_feedback: bool | None = None, bits: int | None = None, bucket_size: int | None = None,
                 seed: int | None = None, min_compress_size: int | None = None, compress_1d: bool | None = None,
                 rank: int | None = None, start_iter: int | None = None, min_compression_rate: float | None = None,
                 warm_start: bool | None = None, find_unused_parameters: bool = False, static_graph: bool = False,
                 gradient_as_bucket_view: bool = False, **options: Any):
        # Typed compressor options (None: the compressor's default) so LightningCLI's init_args reach them;
        # jsonargparse rejects what a signature does not name.
        typed = dict(ratio=ratio, error_feedback=error_feedback, bits=bits, bucket_size=bucket_size, seed=seed,
                     min_compress_size=min_compress_size, compress_1d=compress_1d, rank=rank, start_iter=start_iter,
                     min_compression_rate=min_compression_rate, warm_start=warm_start)
        options = {**{k: v for k, v in typed.items() if v is not None}, **options}
        for name, value, default in (("find_unused_parameters", find_unused_parameters, False),
                                     ("static_graph", static_graph, False),
                                     ("gradient_as_bucket_view", gradient_as_bucket_view, False)):
            if value != default:
                options[name] = value
        if isinstance(compressor, GradientCompressor):
            compressor_kwargs = {}
        else:
            accepted = compressor_options(compressor)
            compressor_kwargs = {k: options.pop(k) for k in list(options) if k in accepted}
            others = {name: compressor_options(name) for name in COMPRESSORS if name != compressor}
            misplaced = {k: [n for n, opts in others.items() if k in opts] for k in options}
            misplaced = {k: v for k, v in misplaced.items() if v}
            if misplaced:  # would otherwise reach DistributedDataParallel(...) as an unknown keyword
                detail = ", ".join(f"{k} (an option of {'/'.join(v)})" for k, v in misplaced.items())
                raise ValueError(f"{detail} is not an option of the {compressor!r} compressor; it takes "
                                 f"{sorted(accepted)}")
            # what is left goes to DDPStrategy and then to DistributedDataParallel(...) on every rank after launch:
            # check it now, against both, so a typo fails here and not on every rank
            check_options(f"CompressedDDPStrategy({compressor!r})", options,
                          set(accepted) | _ddp_strategy_options())
        self.compressor = make_compressor(compressor, **compressor_kwargs)
        super().__init__(ddp_comm_state=self.compressor, ddp_comm_hook=comm_hook, **options)

    def _register_ddp_hooks(self) -> None:
        self.compressor.bind(self.model.module, self.model.process_group)
        _register_ddp_comm_hook(model=self.model, ddp_comm_state=self._ddp_comm_state,
                                ddp_comm_hook=self._ddp_comm_hook, ddp_comm_wrapper=self._ddp_comm_wrapper)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        checkpoint[CHECKPOINT_KEY] = self.gather_compressor_state()
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved:
            self.restore_compressor_state(saved)
        return checkpoint

    def gather_compressor_state(self) -> dict:
        """Every rank's compressor state, gathered (a collective: call it on all ranks)."""
        states = gather_from_ranks(self.compressor.state_dict())
        return {"compressor": self.compressor.name, "world_size": len(states), "ranks": states}

    def restore_compressor_state(self, saved: dict) -> None:
        if saved.get("compressor") != self.compressor.name:
            raise ValueError(f"the checkpoint holds {saved.get('compressor')!r} compressor state but this run uses "
                             f"{self.compressor.name!r}; resume with strategy='ddp_{saved.get('compressor')}' or "
                             "drop the 'effplug_comm' key from the checkpoint")
        states = saved["ranks"]
        if len(states) == self.world_size:
            self.compressor.load_state_dict(states[self.global_rank])
        else:
            self.compressor.load_state_dict(
                self.compressor.merge_rank_states(states, self.world_size, self.global_rank))

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        for name, description in STRATEGY_NAMES.items():
            if name not in strategy_registry:  # idempotent: importing the doors twice is fine
                strategy_registry.register(name, cls, description=description, compressor=name.removeprefix("ddp_"))


STRATEGY_NAMES = {
    "ddp_topk": "DDP with top-k (1%) gradient sparsification and error feedback (effplug)",
    "ddp_natural": "DDP with natural compression: gradients as 8-bit powers of two (effplug)",
    "ddp_cgx": "DDP with CGX 4-bit bucketed gradient quantization (effplug)",
    "ddp_powersgd": "DDP with torch's PowerSGD hook, checkpointed (effplug)",
    "ddp_dither": "DDP with natural dithering: gradients as 4-bit power-of-two levels per bucket (effplug)",
}
