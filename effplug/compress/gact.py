"""GACT (Liu et al., ICML 2022): adaptive bits per saved tensor under an average-bits budget.

GACT's gradient-variance model (Sec. 4, eq. 6): compressing saved tensor ``l`` with ``b_l`` bits adds
``Var ≈ sum_l c_l / (2**b_l - 1)**2`` to the gradient, where the sensitivity ``c_l`` is measured
empirically. Allocation (eq. 7) minimizes that sum subject to ``sum_l b_l * numel_l <= bits * sum_l numel_l``,
solved greedily: start every tensor at 8 bits and repeatedly lower the tensor whose variance increase per
freed bit is smallest.

Sensitivity: we compress only tensor ``l`` at 1 bit (``B = 1``) and take ``c_l = ||g_l - g||**2`` against the
exact gradient ``g`` of the same batch; its expectation is exactly the ``c_l`` of eq. 6. GACT's code takes
``max(||g0 - g1||**2, 2 max(||g0 - g2||**2, ||g1 - g2||**2))`` from three passes; one pass per tensor is
enough once the exact gradient is available (the docs page explains the trade).
"""

from __future__ import annotations

import heapq
import math

import torch

from effplug.compress.actnn import ActNNMethod

BIT_LADDER = (8, 4, 2, 1)


def _variance_factor(bits: int) -> float:
    return 1.0 / (2**bits - 1) ** 2


def allocate_bits(sensitivity: list[float], numels: list[int], target_bits: float) -> list[int]:
    """Greedy solution of GACT eq. 7; returns one of 8/4/2/1 per tensor."""
    bits = [BIT_LADDER[0]] * len(numels)
    budget = target_bits * sum(numels)
    used = sum(b * n for b, n in zip(bits, numels, strict=False))
    heap = []

    def push(i):
        level = BIT_LADDER.index(bits[i])
        if level + 1 < len(BIT_LADDER):
            lower = BIT_LADDER[level + 1]
            extra_var = sensitivity[i] * (_variance_factor(lower) - _variance_factor(bits[i]))
            freed = (bits[i] - lower) * numels[i]
            heapq.heappush(heap, (extra_var / freed, i, lower))

    for i in range(len(numels)):
        push(i)
    while used > budget and heap:
        _, i, lower = heapq.heappop(heap)
        used -= (bits[i] - lower) * numels[i]
        bits[i] = lower
        push(i)
    return bits


def _bounded_sensitivity(value: float) -> float:
    # GACT clamps non-finite or huge sensitivities to 1e10 so one bad probe cannot stall the greedy.
    return 1e10 if not math.isfinite(value) or value > 1e10 else value


class GACTMethod(ActNNMethod):
    """Per-tensor bits from the last calibration; the target average before the first one."""

    name = "gact"
    needs_calibration = True

    def __init__(self, config):
        super().__init__(config)
        self.target_bits = float(config.bits)
        # Before the first calibration: the widest allowed width within the average (3.0 -> 2).
        self.default_bits = max(b for b in BIT_LADDER if b <= self.target_bits)
        self.allocation = torch.empty(0, dtype=torch.int8)
        self.numels = torch.empty(0, dtype=torch.int64)
        self.sensitivity = torch.empty(0, dtype=torch.float64)
        self.calibrations = 0

    def bits_for(self, slot: int) -> int:
        if slot < len(self.allocation):
            return int(self.allocation[slot])
        return self.default_bits

    def probe(self, x, slot):
        return self.quantize(x, 1, stochastic=True)

    def calibrate(self, measurements) -> None:
        # B = 1 for the probe, so c_l = ||g_l - g||^2 (or its per-parameter relative form)
        relative = self.config.sensitivity == "relative"
        sens = [_bounded_sensitivity(m.rel_sq_error if relative else m.sq_error) for m in measurements]
        numels = [m.numel for m in measurements]
        bits = allocate_bits(sens, numels, self.target_bits)
        # Indexed by slot; slots that were not probed (stored losslessly) keep the default and weigh nothing.
        size = max((m.slot for m in measurements), default=-1) + 1
        self.allocation = torch.full((size,), self.default_bits, dtype=torch.int8)
        self.numels = torch.zeros(size, dtype=torch.int64)
        self.sensitivity = torch.zeros(size, dtype=torch.float64)
        for m, b, c in zip(measurements, bits, sens, strict=True):
            self.allocation[m.slot], self.numels[m.slot], self.sensitivity[m.slot] = b, m.numel, c
        self.calibrations += 1

    def summary(self) -> dict:
        return {"gact_average_bits": self.average_bits()}

    def average_bits(self) -> float:
        if not len(self.allocation):
            return float(self.default_bits)
        return float((self.allocation.long() * self.numels).sum() / self.numels.sum())

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "allocation": self.allocation.clone(),
            "numels": self.numels.clone(),
            "sensitivity": self.sensitivity.clone(),
            "calibrations": self.calibrations,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.allocation = state["allocation"].to(torch.int8)
        self.numels = state["numels"].to(torch.int64)
        self.sensitivity = state["sensitivity"].to(torch.float64)
        self.calibrations = int(state["calibrations"])
