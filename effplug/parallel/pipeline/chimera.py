"""Chimera's bidirectional pipeline (Li & Hoefler, SC'21) on torch.distributed.pipelining stages.

Each rank holds two ``PipelineStage``s: stage ``r`` of the *down* replica and stage ``D-1-r`` of the *up*
replica, each on its own process group so the two directions' untagged P2P never match each other. The
rank runs the merged action order of ``effplug.parallel.schedules.chimera`` with the stages' own
``forward_one_chunk`` / ``backward_one_chunk`` and P2P ops; afterwards the two replicas of every stage
(ranks ``s`` and ``D-1-s``) all-reduce their gradients and divide by N, so both replicas take the same step.

torch's schedule validator cannot express two opposite stages per rank, so this uses torch internals
(``ScheduleGPipe._initialize_stage`` to prepare each stage: Schedule1F1B refuses N/2 < D, ``_batch_p2p`` / ``_wait_batch_p2p``,
``stage_index_to_group_rank``); ``effplug.parallel.pipeline.SUPPORTED_TORCH`` pins the versions it is tested with.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from effplug.parallel.pipeline.runner import require_pipelining_internals
from effplug.parallel.schedules import chimera


class ChimeraRunner:
    """``ChimeraRunner(down_stage_module, up_stage_module, microbatches=N, loss_fn=...)`` on every rank.

    ``down_stage_module`` is stage ``rank`` of one model replica, ``up_stage_module`` stage ``D-1-rank`` of a
    second replica with the same initial weights. ``step(inputs, targets)`` (the whole batch on every rank;
    each rank uses the micro-batches its stages need) runs forward and backward and leaves every stage's
    gradient equal to the full-batch gradient; it returns this rank's mean last-stage loss or None.
    """

    def __init__(self, down_stage_module: nn.Module, up_stage_module: nn.Module, microbatches: int, loss_fn,
                 device: torch.device | str = "cpu"):
        require_pipelining_internals("ChimeraRunner",
                                     "Use GPipe/1F1B (effplug.parallel.pipeline.PipelineRunner)")
        from torch.distributed.pipelining import PipelineStage

        self.rank, self.depth = dist.get_rank(), dist.get_world_size()
        self.order = chimera(self.depth, microbatches)[self.rank]  # validates D and N
        self.microbatches, self.loss_fn = microbatches, loss_fn
        down_group = dist.new_group(list(range(self.depth)))
        up_group = dist.new_group(list(range(self.depth)))
        device = torch.device(device)
        self.down = PipelineStage(down_stage_module, self.rank, self.depth, device, group=down_group)
        self.up = PipelineStage(up_stage_module, self.depth - 1 - self.rank, self.depth, device, group=up_group)
        # the up replica's stage s lives on rank D-1-s
        self.up.stage_index_to_group_rank = {s: self.depth - 1 - s for s in range(self.depth)}
        pairs = {frozenset((r, self.depth - 1 - r)) for r in range(self.depth)}
        self.pair_groups = {pair: dist.new_group(sorted(pair)) for pair in sorted(pairs, key=min)}
        self._initialized = False

    def _pair_group(self):
        return self.pair_groups[frozenset((self.rank, self.depth - 1 - self.rank))]

    def _initialize(self, x_chunks, y_chunks) -> None:
        from torch.distributed.pipelining import ScheduleGPipe

        half = self.microbatches // 2
        for stage, offset in ((self.down, 0), (self.up, half)):
            schedule = ScheduleGPipe(stage, n_microbatches=half, loss_fn=self.loss_fn)  # only prepares the stage
            stage.has_backward = True  # torch's schedules set this in step(), which we do not call
            args = (x_chunks[offset],) if stage.is_first else ()
            schedule._initialize_stage(args, {}, target=y_chunks[offset] if stage.is_last else None)
        self._initialized = True

    acsgd = None  # AC-SGD is wired for GPipe/1F1B only

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, sample_ids=None) -> torch.Tensor | None:
        """The runners' common step: the whole batch on every rank (``sample_ids`` is for AC-SGD, unused)."""
        return self.step(inputs, targets)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        from torch.distributed.pipelining.schedules import _batch_p2p, _wait_batch_p2p

        if inputs.shape[0] % self.microbatches:
            raise ValueError(f"batch of {inputs.shape[0]} does not split into {self.microbatches} micro-batches")
        x_chunks, y_chunks = inputs.chunk(self.microbatches), targets.chunk(self.microbatches)
        if not self._initialized:
            self._initialize(x_chunks, y_chunks)
        half = self.microbatches // 2
        for stage in (self.down, self.up):
            stage.clear_runtime_states()
        losses: dict[int, torch.Tensor] = {}
        pending: list = []
        for action in self.order:
            stage = self.down if action.pipe == "down" else self.up
            local = action.microbatch - (0 if action.pipe == "down" else half)
            if action.kind == "F":
                _wait_batch_p2p(_batch_p2p(stage.get_fwd_recv_ops(local)))
                args = (x_chunks[action.microbatch],) if stage.is_first else ()
                output = stage.forward_one_chunk(local, args)
                if stage.is_last:
                    losses[action.microbatch] = self.loss_fn(output, y_chunks[action.microbatch])
                else:
                    pending += _batch_p2p(stage.get_fwd_send_ops(local))
            else:
                if not stage.is_last:
                    _wait_batch_p2p(_batch_p2p(stage.get_bwd_recv_ops(local)))
                stage.backward_one_chunk(local, loss=losses.get(action.microbatch), last_backward=local == half - 1)
                if not stage.is_first:
                    pending += _batch_p2p(stage.get_bwd_send_ops(local))
        _wait_batch_p2p(pending)
        self._sync_replicas()
        if losses:
            return torch.stack([loss.detach() for loss in losses.values()]).mean()
        return None

    def stage_modules(self) -> list[tuple[int, nn.Module]]:
        """(stage index, module) of both replicas on this rank, by stage index."""
        return sorted([(self.down.stage_index, self.down.submod), (self.up.stage_index, self.up.submod)],
                      key=lambda item: item[0])

    def _sync_replicas(self) -> None:
        """Replica gradients of the same stage (ranks s and D-1-s) are summed, then divided by N."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                 for _, module in self.stage_modules() for p in module.parameters()]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self._pair_group())
        flat.div_(self.microbatches)
        offset = 0
        for _, module in self.stage_modules():
            for p in module.parameters():
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone()
                offset += n
