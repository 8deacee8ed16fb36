"""Transductive node classification, the LPG2vec example: random vertex splits and a full-batch training loop
that keeps the weights of the best validation epoch (Kipf & Welling's protocol)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def split_masks(num_vertices: int, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> dict[str, torch.Tensor]:
    """Boolean train/val/test masks over a seeded permutation of the vertices."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions={fractions!r}: give three positive train/val/test fractions summing to 1")
    order = torch.randperm(num_vertices, generator=torch.Generator().manual_seed(seed))
    cuts = [0, round(fractions[0] * num_vertices), round((fractions[0] + fractions[1]) * num_vertices), num_vertices]
    masks = {}
    for name, lo, hi in zip(("train", "val", "test"), cuts[:-1], cuts[1:], strict=True):
        mask = torch.zeros(num_vertices, dtype=torch.bool)
        mask[order[lo:hi]] = True
        masks[name] = mask
    return masks


def accuracy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    return float((logits[mask].argmax(-1) == y[mask]).float().mean())


def train_node_classifier(model: nn.Module, x: torch.Tensor, adjacency: torch.Tensor, y: torch.Tensor,
                          masks: dict, epochs: int = 200, lr: float = 1e-2, weight_decay: float = 5e-4) -> dict:
    """Adam on the training vertices; returns the best validation accuracy, the test accuracy of that epoch's
    weights (which the model keeps) and the final training loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, loss = -1.0, None, float("nan")
    for _ in range(epochs):
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_t = nn.functional.cross_entropy(model(x, adjacency)[masks["train"]], y[masks["train"]])
        loss_t.backward()
        opt.step()
        loss = float(loss_t.detach())
        model.eval()
        with torch.no_grad():
            val = accuracy(model(x, adjacency), y, masks["val"])
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        test = accuracy(model(x, adjacency), y, masks["test"])
    return {"val": best, "test": test, "train_loss": loss}
