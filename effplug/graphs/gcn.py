"""A small GCN for node classification, in plain torch so the core needs no torch_geometric.

Kipf & Welling, ICLR 2017, eq. 2: ``H' = D̂^{-1/2} Â D̂^{-1/2} H W`` with ``Â = A + I`` and ``D̂`` its degree
matrix (PyG's ``GCNConv`` computes the same; the tests check it). The weights are ``nn.Linear`` layers, so
``effplug.quant.quantize_model`` and ``effplug.compress.compressed_activations`` apply to it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def to_undirected(edge_index: torch.Tensor) -> torch.Tensor:
    """Both directions of every edge, duplicates removed."""
    both = torch.cat([edge_index, edge_index.flip(0)], 1)
    return torch.unique(both, dim=1)


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The sparse ``D̂^{-1/2} (A + I) D̂^{-1/2}`` of eq. 2 (edges as given; pass :func:`to_undirected` ones)."""
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be [2, edges]; got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index holds vertex positions outside [0, {num_nodes})")
    loops = torch.arange(num_nodes).expand(2, -1)
    index = torch.cat([edge_index[:, edge_index[0] != edge_index[1]], loops], 1)
    weight = torch.ones(index.shape[1])
    degree = torch.zeros(num_nodes).index_add_(0, index[1], weight)
    norm = degree.rsqrt()
    values = norm[index[0]] * weight * norm[index[1]]
    # row = target, column = source: each vertex sums its in-neighbours, as PyG's flow="source_to_target"
    return torch.sparse_coo_tensor(index.flip(0), values, (num_nodes, num_nodes),
                                   check_invariants=False).coalesce()


def degree_features(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Structure-only input features ``[1, log(1 + degree)]``: the ablation's graph without labels or properties."""
    degree = torch.zeros(num_nodes).index_add_(0, edge_index[1], torch.ones(edge_index.shape[1]))
    return torch.stack([torch.ones(num_nodes), degree.log1p()], 1)


class GCNLayer(nn.Module):
    """One eq. 2 layer: ``adjacency @ (x W) + b``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(adjacency, self.linear(x)) + self.bias


class GCN(nn.Module):
    """``layers`` GCN layers with ReLU and dropout between them; ``forward(x, adjacency)`` gives class logits.
    Build ``adjacency`` once with :func:`normalized_adjacency`."""

    def __init__(self, in_features: int, hidden: int, classes: int, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if layers < 1:
            raise ValueError(f"GCN layers={layers}: use at least 1")
        widths = [in_features] + [hidden] * (layers - 1) + [classes]
        self.layers = nn.ModuleList(GCNLayer(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(self.dropout(x), adjacency)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
