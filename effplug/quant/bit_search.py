"""``search_bits``: per-layer weight bits for ``QATConfig(bits="auto", budget_bits=...)``.

Sensitivity (:mod:`effplug.quant.sensitivity`) times the quantization MSE of each candidate width on the
config's own weight grid gives HAWQ's Ω_l(b); :func:`effplug.quant.bit_allocation.allocate_bits` picks the
exact minimiser under the budget. First and last layers keep ``first_last_bits`` (HAWQ keeps them at 8) and
count against the budget; embeddings keep ``weight_bits``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from effplug.quant.bit_allocation import LayerChoice, allocate_bits, average_bits
from effplug.quant.config import QATConfig
from effplug.quant.sensitivity import LayerSensitivity, layer_sensitivity

log = logging.getLogger("effplug.quant")


@dataclass
class BitSearchResult:
    bits: dict[str, int]  # every planned weight layer -> its weight bits
    average_bits: float  # numel-weighted, over every planned weight layer
    budget_bits: float
    sensitivity: dict[str, LayerSensitivity]
    mse: dict[str, dict[int, float]]  # searched layer -> bits -> weight MSE on the config's grid
    fixed: dict[str, str]  # layers not searched -> why

    def table(self) -> str:
        widths = sorted({b for costs in self.mse.values() for b in costs})
        rows = ["| layer | weights | trace | ± stderr | probes | " + " | ".join(f"Ω({b})" for b in widths)
                + " | bits |", "|---|---|---|---|---|" + "---|" * len(widths) + "---|"]
        for name, bits in self.bits.items():
            if name in self.sensitivity:
                s = self.sensitivity[name]
                omegas = " | ".join(f"{s.trace * self.mse[name][b]:.3g}" for b in widths)
                rows.append(f"| {name} | {s.numel:,} | {s.trace:.4g} | {s.stderr:.2g} | {s.probes} | {omegas} | {bits} |")
            else:
                rows.append(f"| {name} | - | - | - | - | " + " | ".join("-" for _ in widths)
                            + f" | {bits} ({self.fixed[name]}) |")
        rows.append(f"\naverage weight bits {self.average_bits:.3f} (budget {self.budget_bits:.3f})")
        return "\n".join(rows)


def weight_mse(config: QATConfig, module: nn.Module, bits: int) -> float:
    """Mean squared error of ``module``'s weight on the grid ``config`` builds at ``bits`` (a fresh quantizer)."""
    from effplug.quant.convert import _weight_quantizer, float_weight, qat_class_for

    weight = float_weight(module).detach()
    quantizer = _weight_quantizer(config, module, bits, qat_class_for(module).weight_channel_dim, nested=False)
    quantizer.to(weight.device).train()
    with torch.no_grad():
        return float((quantizer(weight) - weight).float().pow(2).mean())


def search_bits(model: nn.Module, config: QATConfig, losses: Sequence[Callable[[], torch.Tensor]],
                progress: Callable[[int, int], None] | None = None) -> BitSearchResult:
    """The per-layer weight bits that minimise Σ Ω_l(b_l) within ``config``'s budget (``progress``: per probe)."""
    from effplug.quant.convert import float_weight, plan_layers

    uniform = dataclasses.replace(config, bits={}, budget_bits=None, budget_bytes=None)  # plan the layers as a uniform run would
    plans, _ = plan_layers(model, uniform)
    modules = dict(model.named_modules())
    numels = {p.name: float_weight(modules[p.name]).numel() for p in plans}
    fixed, bits = {}, {}
    for plan in plans:
        if plan.edge:
            fixed[plan.name], bits[plan.name] = f"first/last layer, first_last_bits={config.first_last_bits}", \
                plan.weight_bits
        elif plan.act_bits is None and plan.kind == "Embedding":
            fixed[plan.name], bits[plan.name] = "embedding, weight_bits", plan.weight_bits
    searched = [p.name for p in plans if p.name not in fixed]
    if not searched:
        raise ValueError("bits='auto' found no layer to search (every quantizable layer is first/last or an "
                         "embedding); pass first_last_bits=None to search them too")
    total = sum(numels.values())
    budget = config.budget_bits * total if config.budget_bytes is None else 8 * config.budget_bytes
    budget_left = budget - sum(bits[n] * numels[n] for n in fixed)
    params = {n: float_weight(modules[n]) for n in searched}
    sensitivity = layer_sensitivity(model, params, losses, method=config.search_method, seed=config.search_seed,
                                     progress=progress)
    mse = {n: {b: weight_mse(config, modules[n], b) for b in config.search_bits} for n in searched}
    choices = [LayerChoice(n, numels[n], {b: max(sensitivity[n].trace, 0.0) * mse[n][b] for b in mse[n]})
               for n in searched]
    try:
        bits.update(allocate_bits(choices, budget_left))
    except ValueError as err:
        raise ValueError(f"bits='auto': {err}") from None
    ordered = {p.name: bits[p.name] for p in plans}
    result = BitSearchResult(ordered, average_bits(ordered, numels), budget / total, sensitivity, mse, fixed)
    negative = [n for n in searched if sensitivity[n].trace < 0]
    if negative:
        log.warning("effplug.quant: bits='auto': the %s trace of %s is negative (a non-convex point or too few "
                    "probes); counted as 0, so those layers get the fewest bits. Calibrate on a trained model or "
                    "raise the probes.", config.search_method, ", ".join(negative))
    return result
