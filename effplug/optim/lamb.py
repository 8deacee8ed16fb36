"""LAMB: layer-wise adaptive moments (You et al., ICLR 2020, arXiv:1904.00962, Algorithm 2).

Per layer ``l`` at step ``t``, with ``phi`` the identity (optionally clipped to ``[0, max_trust]``):

    m <- beta1 * m + (1 - beta1) * g            v <- beta2 * v + (1 - beta2) * g^2
    m_hat = m / (1 - beta1^t)                    v_hat = v / (1 - beta2^t)
    r = m_hat / (sqrt(v_hat) + eps)              u = r + lambda * w
    w <- w - lr * phi(||w||) / ||u|| * u

Groups with ``adapt=False`` (see :func:`exclude_bias_and_norm`) take the plain Adam(W) step: ratio 1.
"""

from __future__ import annotations

import torch

from effplug.optim.finite_step import FiniteStepOptimizer
from effplug.optim.trust_ratio import trust_ratio
from effplug.options import checks_keywords


@checks_keywords
class LAMB(FiniteStepOptimizer):
    """``LAMB(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)``."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_trust: float | None = None, bias_correction: bool = True,
                 adapt: bool = True):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
            raise ValueError(f"LAMB lr={lr!r}: use a number >= 0")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LAMB betas={betas!r}: use two numbers in [0, 1)")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"LAMB eps={eps!r}, weight_decay={weight_decay!r}: use eps > 0 and weight_decay >= 0")
        if max_trust is not None and not max_trust > 0:
            raise ValueError(f"LAMB max_trust={max_trust!r}: use a number > 0, or None for no clip")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_trust=max_trust, bias_correction=bias_correction, adapt=adapt))

    def _finite_step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, w = p.grad.float(), p.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(w)
                    state["exp_avg_sq"] = torch.zeros_like(w)
                state["step"] += 1
                t = state["step"]
                state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat, v_hat = state["exp_avg"], state["exp_avg_sq"]
                if group["bias_correction"]:
                    m_hat, v_hat = m_hat / (1 - beta1**t), v_hat / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * w
                if group["adapt"]:
                    w_norm = w.norm()
                    if group["max_trust"] is not None:
                        w_norm = w_norm.clamp(max=group["max_trust"])
                    ratio = trust_ratio(w_norm, update.norm())
                else:
                    ratio = torch.ones((), device=p.device)
                p.add_((update * ratio).to(p.dtype), alpha=-group["lr"])
