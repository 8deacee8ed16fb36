"""``PipelineStrategy``: Lightning training through GPipe, 1F1B or Chimera pipelines (``pipeline_*`` names).

The strategy takes over the training step. In ``setup`` it splits the LightningModule's ``model`` attribute
(an ``nn.Sequential`` or an HF GPT-2 / Llama-style decoder LM; ``split_points`` or balanced by parameters) and keeps this rank's
stage (Chimera: its two stages), so ``configure_optimizers`` sees only them. ``training_step`` runs the
schedule on the whole batch (every rank gets the same batch: the pipeline is the model, not data parallel),
so forward and backward happen together (``StageList``: calling ``module.model(x)`` in validation, test or
predict steps chains every rank's stage forward and gives the output to all ranks); the returned loss is the mean micro-batch loss, all-reduced from the
last stage(s) so loggers and the progress bar see it on every rank, and ``backward`` is a no-op. Checkpoints gather every
rank's stage weights and optimizer state and give each rank its own back on resume (same pipeline layout).

Loss: the module's ``pipeline_loss(output, target)`` if it has one, else cross-entropy over the last dim.

``acsgd=True`` (or an ``ACSGDConfig``) sends stage boundaries through AC-SGD (GPipe and 1F1B): the first
sight of every sample goes exact, later epochs send 2-4-bit activation changes and 8-bit gradients. Sample
ids come from the batch's third element if it holds one integer per row, else from a hash of the input row.
The caches and seed positions of every rank are saved under ``"effplug_acsgd"``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from effplug._optional import require
from effplug.distributed import gather_from_ranks
from effplug.logs import log_once
from effplug.options import checks_keywords
from effplug.parallel.pipeline import StageList, build_pipeline, split_decoder, split_sequential
from effplug.parallel.pipeline.acsgd import ACSGDConfig, batch_sample_ids
from effplug.parallel.pipeline.builder import SCHEDULES, check_pipeline_settings

require("pytorch_lightning", extra="lightning")

from pytorch_lightning.strategies import DDPStrategy, Strategy  # noqa: E402

ACSGD_KEY = "effplug_acsgd"
log = logging.getLogger("effplug.pipeline")


def _acsgd_config(acsgd) -> ACSGDConfig | None:
    if acsgd is None or acsgd is False:
        return None
    if acsgd is True:
        return ACSGDConfig()
    if isinstance(acsgd, dict):
        return ACSGDConfig(**acsgd)
    if isinstance(acsgd, ACSGDConfig):
        return acsgd
    raise TypeError(f"acsgd={acsgd!r}: use True, an effplug.parallel.pipeline.acsgd.ACSGDConfig or a dict of its fields")


def _default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


NETWORK_ATTRIBUTES = ("model", "net", "network")


def find_pipeline_model(module: torch.nn.Module, module_attr: str | None = None) -> str:
    """The attribute of ``module`` that holds the network to split (see ``PipelineStrategy``)."""
    if module_attr is not None:
        if not isinstance(getattr(module, module_attr, None), torch.nn.Module):
            raise AttributeError(f"PipelineStrategy(module_attr={module_attr!r}): {type(module).__name__} has no "
                                 f"nn.Module attribute {module_attr!r}; name the attribute that holds the network")
        return module_attr
    for name in NETWORK_ATTRIBUTES:
        if isinstance(getattr(module, name, None), torch.nn.Module):
            return name
    sequential = [name for name, child in module.named_children() if isinstance(child, torch.nn.Sequential)]
    if len(sequential) == 1:
        return sequential[0]
    children = [name for name, _ in module.named_children()]
    raise AttributeError(f"PipelineStrategy cannot tell which attribute of {type(module).__name__} holds the network "
                         f"(none of {', '.join(NETWORK_ATTRIBUTES)}; children: {children or 'none'}): pass "
                         "PipelineStrategy(module_attr='<attribute>') or name it self.model")


@checks_keywords(also_from=DDPStrategy.__init__)
class PipelineStrategy(DDPStrategy):
    """``PipelineStrategy(schedule="1f1b", microbatches=4, split_points=None, module_attr=None, acsgd=None)``.

    ``module_attr`` names the LightningModule attribute that holds the network; by default the first of
    ``model``, ``net``, ``network`` that is a module, else the module's only ``nn.Sequential`` child.
    The strategy runs the pipeline schedule **instead of your** ``training_step`` (it logs that once at
    startup): the loss is the module's ``pipeline_loss(output, target)``, else cross-entropy.
    """

    strategy_name = "pipeline"

    def __init__(self, schedule: str = "1f1b", microbatches: int = 4, split_points: list[int] | None = None,
                 module_attr: str | None = None, acsgd: bool | ACSGDConfig | dict | None = None, **kwargs: Any):
        self.acsgd = _acsgd_config(acsgd)
        check_pipeline_settings(schedule, self.acsgd)
        if not isinstance(microbatches, int) or microbatches < 1:
            raise ValueError(f"microbatches={microbatches!r}: use a positive int")
        if module_attr is not None and not isinstance(module_attr, str):
            raise TypeError(f"module_attr={module_attr!r}: name the LightningModule attribute that holds the "
                            "network, e.g. module_attr='model'")
        super().__init__(**kwargs)
        self.schedule, self.microbatches = schedule, microbatches
        self.split_points, self.module_attr = split_points, module_attr
        self.runner = None
        self._said: set = set()  # what this strategy reported once

    # -- setup: split instead of wrapping in DDP ------------------------------------------------------------

    def _split(self, model) -> list:
        world = self.world_size
        if isinstance(model, torch.nn.Sequential):
            return split_sequential(model, None if self.split_points else world, self.split_points)
        try:
            return split_decoder(model, None if self.split_points else world, self.split_points)
        except TypeError:
            raise TypeError(f"PipelineStrategy splits nn.Sequential models and HF decoder LMs (GPT-2, Llama-style); "
                            f"{self.module_attr!r} is a {type(model).__name__}. Make it an nn.Sequential of the "
                            "stages' layers.") from None

    def setup(self, trainer) -> None:

        if trainer.accumulate_grad_batches != 1:
            raise ValueError("PipelineStrategy runs a whole batch as micro-batches; instead of "
                             f"accumulate_grad_batches={trainer.accumulate_grad_batches}, raise microbatches= and the batch size")
        module = self.lightning_module
        self.module_attr = find_pipeline_model(module, self.module_attr)
        model = getattr(module, self.module_attr)
        log_once(log, "pipeline-takes-over-training-step",
                 "effplug pipeline_%s: the pipeline schedule runs instead of %s.training_step (the network is "
                 "module.%s; loss: pipeline_loss(output, target) if the module defines it, else cross-entropy). "
                 "validation/test/predict steps run unchanged.", self.schedule, type(module).__name__,
                 self.module_attr)
        if isinstance(model, StageList) and self.runner is not None:  # validate/test after fit: already split
            return self._setup_without_broadcast(trainer)
        loss_fn = getattr(module, "pipeline_loss", _default_loss)
        self.runner, mine = build_pipeline(model, self._split, self.schedule, self.microbatches, loss_fn,
                                           rank=self.global_rank, world=self.world_size, device=self.root_device,
                                           acsgd=self.acsgd)
        setattr(module, self.module_attr, mine)  # the optimizer is built over this rank's stage(s) only
        self._setup_without_broadcast(trainer)

    def _setup_without_broadcast(self, trainer) -> None:
        # DDPStrategy.setup broadcasts rank 0's weights to every rank outside fit (validate, test, predict);
        # here every rank holds a different stage, so go to Strategy.setup, which has no broadcast
        Strategy.setup(self, trainer)

    def _setup_model(self, model):
        return model  # the pipeline is the model; no data-parallel wrapper

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": 1, "rank": 0}  # every stage sees the same batch

    # -- the training step ----------------------------------------------------------------------------------

    def training_step(self, *args: Any, **kwargs: Any):
        batch = args[0]
        inputs, targets = batch[0], batch[1]
        for p in self.lightning_module.parameters():  # Lightning zeroes after training_step; the schedule accumulates
            p.grad = None
        ids = batch_sample_ids(batch) if self.acsgd is not None else None
        loss = self.runner.run(inputs, targets, sample_ids=ids)
        if ids is not None:
            self._report_warmup_steps()
        # the last stage(s) hold the loss: one rank for GPipe/1F1B, two for Chimera (each a half of the batch)
        total = torch.zeros(2, device=self.root_device)
        if loss is not None:
            total[0], total[1] = loss, 1.0
        torch.distributed.all_reduce(total)
        value = total[0] / total[1]
        self.lightning_module.log("train_loss", value, prog_bar=True)
        # Lightning zeroes gradients between training_step and backward: hold them until backward()
        self._pipeline_grads = [(p, p.grad) for p in self.lightning_module.parameters()]
        for p, _ in self._pipeline_grads:
            p.grad = None
        return value.requires_grad_(True)  # Lightning's closure expects a differentiable loss

    def backward(self, closure_loss, optimizer, *args: Any, **kwargs: Any):
        # the schedule already ran backward with the forward; hand its gradients back now
        for p, grad in getattr(self, "_pipeline_grads", []):
            p.grad = grad
        self._pipeline_grads = []
        return closure_loss

    def _report_warmup_steps(self) -> None:
        if self.runner.acsgd.compressed or self.lightning_module.current_epoch < 1:
            return
        log_once(log, "acsgd-plain-steps",
                 "AC-SGD: a batch in epoch %d still held samples never seen before, so it went exact. AC-SGD "
                 "compresses changes of the same sample between epochs; inputs that change every epoch "
                 "(random augmentation) give new hashes. Pass stable ids as the batch's third element.",
                 self.lightning_module.current_epoch, seen=self._said)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.acsgd is not None and self.runner is not None:
            meter = self.runner.acsgd.meter
            log.info("AC-SGD rank %d: %.0f bytes/step sent vs %.0f dense fp32 (%.2fx fewer)", self.global_rank,
                     meter.bytes_per_step, meter.dense_bytes_per_step, meter.ratio)

    # -- checkpoints: every rank's stage ----------------------------------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self.acsgd is not None and self.runner is not None:
            checkpoint[ACSGD_KEY] = {"ranks": gather_from_ranks(self.runner.acsgd.state_dict()),
                                     "config": self.acsgd.as_dict()}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
        saved = checkpoint.get(ACSGD_KEY)
        if self.acsgd is not None and saved:
            if len(saved["ranks"]) != self.world_size:
                raise ValueError(f"checkpoint holds AC-SGD caches of {len(saved['ranks'])} ranks, this run has "
                                 f"{self.world_size}; resume with the same pipeline layout")
            self.runner.acsgd.load_state_dict(saved["ranks"][self.global_rank])
        elif self.acsgd is not None:
            log.warning("AC-SGD: the checkpoint has no AC-SGD caches; the first epoch after resume goes exact")
        return checkpoint

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # the saved weights are per stage: split first, then load

    def lightning_module_state_dict(self) -> dict[str, Any]:
        own = {k: v.detach().cpu() for k, v in self.lightning_module.state_dict().items()}
        return {"pipeline_ranks": gather_from_ranks(own)}

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        ranks = checkpoint["state_dict"]["pipeline_ranks"]
        if len(ranks) != self.world_size:
            raise ValueError(f"checkpoint holds {len(ranks)} pipeline stages, this run has {self.world_size} ranks")
        self.lightning_module.load_state_dict(ranks[self.global_rank], strict=strict)

    def optimizer_state(self, optimizer) -> dict:
        return {"pipeline_ranks": gather_from_ranks(optimizer.state_dict())}

    def load_optimizer_state_dict(self, checkpoint) -> None:
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"], strict=True):
            optimizer.load_state_dict(state["pipeline_ranks"][self.global_rank])

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        for schedule in SCHEDULES:
            name = f"pipeline_{schedule}"
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=f"{schedule} pipeline parallelism (effplug)",
                                           schedule=schedule)
