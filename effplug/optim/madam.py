"""Madam (Bernstein, Zhao, Meister, Liu, Anandkumar, Yue, NeurIPS 2020, arXiv:2006.14560) and LNS-Madam.

Madam (Algorithm 1): with ``v`` an EMA of ``g^2`` (decay 0.999, bias-corrected) and ``g* = g / sqrt(v)``,

    w <- w * exp(-lr * sign(w) * g*),    then |w| <= w_max = p_scale * rms(w_0)

LNS-Madam (Zhao et al., IEEE Trans. Computers 2022): the same update in base 2 with the normalized gradient
clamped to ``g_bound`` and rounded to an integer, so ``log2|w|`` moves by whole multiples of ``lr``. Here the
weights live in ``LNSFormat(bits, gamma)`` and ``lr`` must be a whole number of grid steps (``lr * gamma``
an integer): the optimizer updates each weight's integer log-magnitude code,
``e <- clamp(e + lr*gamma * sign(w) * round(clamp(g*, +-g_bound)), 0, max_code)``, and writes back
``sign(w) * w_max * 2^(-e / gamma)``, so weights never leave the grid.
"""

from __future__ import annotations

import logging

import torch

from effplug.optim.finite_step import FiniteStepOptimizer
from effplug.options import checks_keywords
from effplug.quant.lns import LNSFormat

log = logging.getLogger("effplug.optim")


def _normalized_gradient(state: dict, grad: torch.Tensor, beta: float) -> torch.Tensor:
    state["step"] += 1
    state["exp_avg_sq"].mul_(beta).addcmul_(grad, grad, value=1 - beta)
    corrected = state["exp_avg_sq"] / (1 - beta ** state["step"])
    normed = grad / corrected.sqrt()
    return torch.nan_to_num(normed, nan=0.0, posinf=0.0, neginf=0.0)  # 0/0 where a gradient was always 0


class _MultiplicativeOptimizer(FiniteStepOptimizer):
    """The loop both share: closure, first-step state (``w_max``, the g^2 EMA), the normalized gradient."""

    def _finite_step(self) -> None:
        # an inf/NaN gradient would zero into the EMA and freeze the weights it touches: the base skips the step
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["max"] = group["p_scale"] * p.float().pow(2).mean().sqrt().clamp_min(1e-12)
                    state["step"] = 0
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    self._init_state(p, state, group)
                self._update(p, state, group, _normalized_gradient(state, p.grad.float(), group["beta"]))

    def _init_state(self, p, state: dict, group: dict) -> None:
        pass

    def _update(self, p, state: dict, group: dict, normed: torch.Tensor) -> None:
        raise NotImplementedError


@checks_keywords
class Madam(_MultiplicativeOptimizer):
    """``Madam(model.parameters(), lr=0.01)``: multiplicative updates; weights keep their sign."""

    def __init__(self, params, lr: float = 0.01, p_scale: float = 3.0, g_bound: float | None = None,
                 beta: float = 0.999):
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0 (Madam's default is 0.01)")
        if not p_scale > 0:
            raise ValueError(f"p_scale={p_scale!r} must be > 0 (the weight bound is p_scale * rms(w0))")
        super().__init__(params, dict(lr=lr, p_scale=p_scale, g_bound=g_bound, beta=beta))

    def _update(self, p, state, group, normed):
        if group["g_bound"] is not None:
            normed.clamp_(-group["g_bound"], group["g_bound"])
        updated = p.float() * torch.exp(-group["lr"] * normed * torch.sign(p.float()))
        p.copy_(torch.maximum(torch.minimum(updated, state["max"]), -state["max"]))


@checks_keywords
class LNSMadam(_MultiplicativeOptimizer):
    """``LNSMadam(model.parameters(), lr=1/8, bits=8, gamma=8)``: Madam on an 8-bit LNS grid.

    The first step puts each weight on the grid (``w_max = p_scale * rms(w_0)``); afterwards only integer
    codes change. ``state['codes']``/``state['negative']`` are the stored LNS weights.
    """

    def __init__(self, params, lr: float = 1 / 8, bits: int = 8, gamma: int = 8, p_scale: float = 3.0,
                 g_bound: float = 10.0, beta: float = 0.999):
        fmt = LNSFormat(bits, gamma)
        steps = lr * gamma
        if not lr > 0 or abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"lr={lr!r} must be a positive multiple of 1/gamma = 1/{gamma} so weights stay on "
                             f"the LNS grid (e.g. lr={1 / gamma:g})")
        # plain ints in the group, not the format object: checkpoints load with weights_only=True
        super().__init__(params, dict(lr=lr, p_scale=p_scale, g_bound=g_bound, beta=beta, bits=fmt.bits, gamma=gamma))

    def _init_state(self, p, state, group):
        state["negative"], state["codes"], _ = LNSFormat(group["bits"], group["gamma"]).encode(p, state["max"])

    def _update(self, p, state, group, normed):
        fmt = LNSFormat(group["bits"], group["gamma"])
        if state["codes"].dtype != torch.int16:  # Optimizer.load_state_dict casts state to the param dtype
            state["codes"] = state["codes"].round().to(torch.int16)
            state["negative"] = state["negative"].bool()
        normed = normed.clamp(-group["g_bound"], group["g_bound"]).round()
        sign = torch.where(state["negative"], -1.0, 1.0)
        codes = state["codes"]
        steps = group["lr"] * fmt.gamma
        if not steps >= 1 - 1e-9 or abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"LNSMadam: lr={group['lr']!r} is not a positive multiple of 1/gamma = 1/{fmt.gamma}, so the update "
                f"lr*gamma={steps:g} is not a whole number of grid steps (a scheduler changed it?). Keep lr*gamma a "
                f"positive integer: a StepLR/MultiStepLR gamma that keeps it whole (e.g. lr 1/2 -> 1/4 -> 1/8 with "
                f"gamma=0.5 stops at 1/{fmt.gamma}; the HF Trainer: lr_scheduler_type='constant'), or a larger LNS gamma")
        steps = round(steps)
        moved = (codes.float() + steps * normed * sign).clamp(0, fmt.max_code).to(codes.dtype)
        state["codes"] = torch.where(codes == fmt.zero_code, codes, moved)  # zero stays zero
        p.copy_(fmt.decode(state["negative"], state["codes"], state["max"]).to(p.dtype))
