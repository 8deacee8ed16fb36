"""HF doors for gradient compression: a callback that registers the compressor on ``trainer.model_wrapped``."""

from __future__ import annotations

import logging

import torch

from effplug._optional import require
from effplug.comm import GradientCompressor, make_compressor, register
from effplug.hf._checkpoint import load_state, save_state
from effplug.hf._metrics import MetricsCallback, put_first

transformers = require("transformers", extra="hf")
log = logging.getLogger("effplug.hf")

STATE_FILE = "effplug_comm_rank{rank}.pt"


class GradientCompressionCallback(MetricsCallback):
    """Average gradients with an effplug compressor under the HF Trainer's DDP.

    Callbacks never see the DDP wrapper, so the callback holds the trainer: build it with
    ``compress_gradients(trainer, "topk", ratio=0.01)`` (or ``EffTrainer(comm=...)``). At ``on_train_begin``
    (DDP exists, no backward yet) the hook goes on ``trainer.model_wrapped``. Each rank saves its compressor
    state next to HF's per-rank RNG state (``checkpoint-N/effplug_comm_rank{r}.pt``) and loads it on resume.
    """

    def __init__(self, compressor: str | GradientCompressor = "topk", trainer=None, **options):
        self.compressor = make_compressor(compressor, **options)
        self.trainer = trainer
        self.registered = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise RuntimeError("GradientCompressionCallback needs the trainer: use "
                               "effplug.hf.compress_gradients(trainer, ...) or EffTrainer(comm=...)")
        wrapped = self.trainer.model_wrapped
        if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            if args.world_size > 1:
                raise RuntimeError(f"gradient compression needs DDP, but the trainer wraps the model in "
                                   f"{type(wrapped).__name__} (DeepSpeed/FSDP do their own communication); "
                                   "drop comm= or use plain data parallelism")
            log.warning("effplug: a single process sends no gradients; %s compression is idle", self.compressor.name)
            return
        if not self.registered:
            register(wrapped, self.compressor)
            self.registered = True
        saved = load_state(args, state, self._state_file(args), f"{self.compressor.name} compressor")
        if saved is not None:
            self.compressor.load_state_dict(saved)

    def on_save(self, args, state, control, **kwargs):
        save_state(args, state, self._state_file(args), self.compressor.state_dict())

    def metrics(self) -> dict:
        meter = self.compressor.meter
        if not self.registered or not meter.steps:
            return {}
        return {"comm_bytes_per_step": meter.bytes_per_step, "comm_dense_bytes_per_step": meter.dense_bytes_per_step,
                "comm_ratio": meter.ratio}

    @staticmethod
    def _state_file(args) -> str:
        return STATE_FILE.format(rank=args.process_index)


def compress_gradients(trainer, compressor: str | GradientCompressor = "topk", **options) -> GradientCompressionCallback:
    """Add gradient compression to a built ``transformers.Trainer``; returns the callback (``.compressor.meter``)."""
    if not isinstance(trainer, transformers.Trainer):
        raise TypeError(f"compress_gradients needs the built transformers.Trainer (it registers the hook on "
                        f"trainer.model_wrapped); got {type(trainer).__name__}. Build the Trainer first, or use "
                        "effplug.hf.EffTrainer(comm=...)")
    callback = GradientCompressionCallback(compressor, trainer=trainer, **options)
    trainer.add_callback(callback)
    put_first(trainer, callback)
    return callback
