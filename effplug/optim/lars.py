"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017, arXiv:1708.03888, Algorithm 1).

Per layer ``l``, with trust coefficient ``eta``, weight decay ``beta`` and momentum ``m``:

    lambda_l = eta * ||w_l|| / (||g_l|| + beta * ||w_l||)            (eq. 6, the local LR)
    v_l     <- m * v_l + gamma * lambda_l * (g_l + beta * w_l)        (Algorithm 1)
    w_l     <- w_l - v_l

``gamma`` is the global learning rate (its schedule: warm-up then polynomial decay in the paper). Groups with
``adapt=False`` (see :func:`exclude_bias_and_norm`) take plain momentum SGD: ``lambda = 1``.
"""

from __future__ import annotations

import torch

from effplug.optim.finite_step import FiniteStepOptimizer
from effplug.optim.trust_ratio import trust_ratio
from effplug.options import checks_keywords


@checks_keywords
class LARS(FiniteStepOptimizer):
    """``LARS(params, lr=0.1, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.001)``."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, nesterov: bool = False, adapt: bool = True):
        for name, value, low in (("lr", lr, 0.0), ("momentum", momentum, 0.0), ("weight_decay", weight_decay, 0.0),
                                 ("trust_coefficient", trust_coefficient, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise ValueError(f"LARS {name}={value!r}: use a number >= {low}")
        if momentum >= 1:
            raise ValueError(f"LARS momentum={momentum!r}: use a number in [0, 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, nesterov=nesterov, adapt=adapt))

    def _finite_step(self) -> None:
        for group in self.param_groups:
            wd, m = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                w = p.float()
                if group["adapt"]:
                    w_norm = w.norm()
                    # eq. 6: the decay term's norm joins the denominator
                    local = trust_ratio(w_norm, g.norm() + wd * w_norm, group["trust_coefficient"])
                else:
                    local = torch.ones((), device=p.device)
                update = (g + wd * w) * local
                state = self.state[p]
                if m:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(w)
                    buf = state["momentum_buffer"].mul_(m).add_(update)
                    update = update.add(buf, alpha=m) if group["nesterov"] else buf
                p.add_(update.to(p.dtype), alpha=-group["lr"])

