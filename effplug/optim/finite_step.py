"""``FiniteStepOptimizer``: the step every effplug optimizer shares. It runs the closure, then skips the whole
update when any gradient is inf/NaN (one host sync per step), as GradScaler does, so no moment, momentum or
trust ratio is ever computed from an overflow."""

from __future__ import annotations

import logging

import torch

from effplug.logs import log_once

log = logging.getLogger("effplug.optim")


class FiniteStepOptimizer(torch.optim.Optimizer):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.skipped_steps = getattr(self, "skipped_steps", 0) + 1
            log_once(log, f"nonfinite-{type(self).__name__}",
                     "effplug.optim %s: inf/NaN gradients; the step was skipped (weights and moment estimates "
                     "unchanged). Reported once; skipped steps are counted in optimizer.skipped_steps.",
                     type(self).__name__)
            return loss
        self._finite_step()
        return loss

    def _finite_step(self) -> None:
        raise NotImplementedError
