"""Bits per layer under a size budget, minimising HAWQ's second-order perturbation (HAWQ-v3, Yao et al., ICML
2021, Sec. 3.3, the ILP of eq. 11 with the sensitivity of HAWQ-v2, Dong et al. 2020, eq. 3):

    minimise   Σ_l Ω_l(b_l),   Ω_l(b) = Tr(H_l) / n_l · ||Q_b(W_l) − W_l||² = Tr(H_l) · MSE_l(b)
    subject to Σ_l n_l · b_l ≤ budget_bits · Σ_l n_l   (average weight bits; or a budget of bytes)

``Q_b`` is the weight quantizer the QAT config would build at ``b`` bits, so the cost is measured on the grid
training will use. The program is a multiple-choice knapsack, solved exactly by dynamic programming over
layers on the Pareto front of (bits used, Ω): a partial assignment that uses more bits for a larger Ω can
never be completed into the optimum, so only the front is kept. No solver dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

CANDIDATE_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class LayerChoice:
    name: str
    numel: int
    costs: dict  # bits -> Ω_l(bits)


def allocate_bits(layers: list[LayerChoice], budget_total_bits: float) -> dict[str, int]:
    """The exact minimiser of ``Σ costs[b_l]`` with ``Σ numel · b_l <= budget_total_bits``."""
    if not layers:
        return {}
    lowest = sum(layer.numel * min(layer.costs) for layer in layers)
    if lowest > budget_total_bits + 1e-9:
        raise ValueError(f"the budget left for the searched layers, {budget_total_bits / 8:,.0f} bytes of weights "
                         f"(after any fixed first/last layers), is below the smallest allocation ({lowest / 8:,.0f} "
                         f"bytes, every searched layer at {min(layers[0].costs)} bits); raise budget_bits, lower "
                         "first_last_bits, or quantize fewer layers")
    # front: list of (bits used, total cost, choices) with bits ascending and cost strictly descending
    front = [(0, 0.0, ())]
    for layer in layers:
        extended = [(used + layer.numel * b, cost + layer.costs[b], choices + (b,))
                    for used, cost, choices in front for b in sorted(layer.costs)
                    if used + layer.numel * b <= budget_total_bits + 1e-9]
        extended.sort(key=lambda e: (e[0], e[1]))
        front = []
        for entry in extended:
            if not front or entry[1] < front[-1][1]:
                front.append(entry)
    best = min(front, key=lambda e: (e[1], e[0]))
    return {layer.name: b for layer, b in zip(layers, best[2], strict=True)}


def average_bits(bits: dict[str, int], numels: dict[str, int]) -> float:
    total = sum(numels[name] for name in bits)
    return sum(bits[name] * numels[name] for name in bits) / total
