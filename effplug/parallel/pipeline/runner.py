"""``PipelineRunner``: one rank's stage under torch's GPipe or 1F1B schedule (torch's stage and P2P)."""

from __future__ import annotations

import torch
from torch import nn

SCHEDULE_NAMES = ("gpipe", "1f1b")
# torch versions whose torch.distributed.pipelining internals Chimera and AC-SGD's stages are tested with
SUPPORTED_TORCH = ("2.13",)


def require_pipelining_internals(feature: str, instead: str) -> None:
    """Raise, saying what to do, when ``feature`` (which uses private pipelining APIs) meets an untested torch."""
    if not torch.__version__.startswith(SUPPORTED_TORCH):
        raise RuntimeError(f"{feature} uses torch.distributed.pipelining internals tested on torch "
                           f"{', '.join(SUPPORTED_TORCH)}.x; this is {torch.__version__}. {instead} or pin torch.")


class PipelineRunner:
    """One rank's stage under torch's GPipe or 1F1B schedule.

    ``PipelineRunner(stage_module, stage_index, num_stages, schedule="1f1b", microbatches=4, loss_fn=...)``;
    ``step(inputs, targets)`` runs forward and backward of every micro-batch (rank 0 passes the inputs, the
    last rank the targets) and returns the mean micro-batch loss on the last stage, None elsewhere. The
    gradients are in the stage's parameters, scaled to the whole batch; step the optimizer afterwards.

    ``acsgd=ACSGDConfig(bits=4)`` sends the boundary activations as AC-SGD changes and the gradients at
    8 bits (``effplug.parallel.pipeline.acsgd_stage``); then every rank passes ``sample_ids`` (one stable id per row,
    e.g. ``effplug.parallel.pipeline.acsgd.row_sample_ids(inputs)``) and ``self.meter`` counts the bytes sent.
    """

    def __init__(self, stage_module: nn.Module, stage_index: int, num_stages: int, schedule: str = "1f1b",
                 microbatches: int = 4, loss_fn=None, group=None, device: torch.device | str = "cpu",
                 sync_tied: bool = False, acsgd=None):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULE_NAMES} (Chimera: effplug.parallel.schedules)")
        self.stage_index, self.num_stages, self.microbatches = stage_index, num_stages, microbatches
        schedule_class = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B

        def make_schedule(stage):
            return schedule_class(stage, n_microbatches=microbatches, loss_fn=loss_fn)

        if acsgd is not None:
            from effplug.parallel.pipeline.acsgd_stage import ACSGDStages

            self.acsgd = ACSGDStages(stage_module, stage_index, num_stages, device, group, acsgd, make_schedule)
            self.schedule = None
        else:
            self.acsgd = None
            self.schedule = make_schedule(PipelineStage(stage_module, stage_index, num_stages, torch.device(device),
                                                        group=group))
        # a weight tied across the first and last stage (split_decoder): every rank joins the group creation
        self.tied_group = torch.distributed.new_group([0, num_stages - 1]) if sync_tied else None
        self.tied_parameter = getattr(stage_module, "tied_parameter", None)

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    def run(self, inputs: torch.Tensor, targets: torch.Tensor,
            sample_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """The runners' common step: the whole batch on every rank; this rank takes what its stage needs."""
        return self.step(inputs if self.is_first else None, targets if self.is_last else None, sample_ids=sample_ids)

    def step(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None,
             sample_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        losses: list = []
        args = (inputs,) if self.is_first else ()
        schedule = self.schedule
        if self.acsgd is not None:
            if sample_ids is None:
                raise ValueError("AC-SGD caches activations per sample: pass sample_ids on every rank "
                                 "(effplug.parallel.pipeline.acsgd.row_sample_ids(inputs) gives stable ids)")
            schedule = self.acsgd.prepare(sample_ids, self.microbatches)
        schedule.step(*args, target=targets if self.is_last else None, losses=losses)
        if self.acsgd is not None:
            self.acsgd.end_step()
        if self.tied_group is not None and self.tied_parameter is not None:
            # embedding gradient (first stage) + head gradient (last stage) = the tied weight's gradient
            torch.distributed.all_reduce(self.tied_parameter.grad, group=self.tied_group)
        if self.is_last:
            return torch.stack([loss.detach() for loss in losses]).mean()
        return None
