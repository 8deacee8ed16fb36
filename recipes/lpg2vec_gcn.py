"""LPG2vec node classification: a labeled property graph from a Neo4j CSV export (or the synthetic one) turned
into GCN features, trained with 4-bit QAT and 2-bit saved activations in a plain loop.

    python recipes/lpg2vec_gcn.py                                  # the synthetic graph
    python recipes/lpg2vec_gcn.py --nodes nodes.csv --relationships rels.csv --target fraud

The target is a vertex property (excluded from the features); the encoder is fitted on the training vertices
and saved next to the model, so the same features can be rebuilt at inference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from effplug.compress import compressed_activations
from effplug.graphs import (
    GCN,
    LPGEncoder,
    normalized_adjacency,
    read_neo4j_csv,
    split_masks,
    synthetic_lpg,
    to_undirected,
    train_node_classifier,
)
from effplug.quant import QATConfig, quantize_model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", help="neo4j-admin import node CSV (default: the synthetic graph)")
    parser.add_argument("--relationships", help="neo4j-admin import relationship CSV")
    parser.add_argument("--target", default="class", help="the vertex property to predict")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", default="lpg2vec_gcn")
    args = parser.parse_args(argv)

    if args.nodes:
        vertices, edges = read_neo4j_csv(args.nodes, args.relationships)
        classes = sorted({v[args.target] for v in vertices})
        y = torch.tensor([classes.index(v[args.target]) for v in vertices])
    else:
        vertices, edges, y = synthetic_lpg(1000, seed=0)
        vertices = [{**v, args.target: int(c)} for v, c in zip(vertices, y.tolist(), strict=True)]
    masks = split_masks(len(vertices), seed=0)
    train_vertices = [v for v, keep in zip(vertices, masks["train"].tolist(), strict=True) if keep]
    encoder = LPGEncoder(exclude=[args.target]).fit(train_vertices, edges)
    features = encoder.transform(vertices, edges)
    edge_index = to_undirected(features.edge_index)
    adjacency = normalized_adjacency(edge_index, len(vertices))

    torch.manual_seed(0)
    model = quantize_model(GCN(features.x.shape[1], 64, int(y.max()) + 1),
                           QATConfig(weight_bits=4, act_bits=8, first_last_bits=None))
    with compressed_activations(model, bits=2, min_numel=64, scope="model"):
        result = train_node_classifier(model, features.x, adjacency, y, masks, epochs=args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save(out / "encoder.pt")
    torch.save(model.state_dict(), out / "gcn.pt")
    print(f"{features.x.shape[1]} LPG2vec features per vertex; test accuracy {100 * result['test']:.1f}% "
          f"(W4A8 QAT, 2-bit saved activations); saved {out}/encoder.pt and {out}/gcn.pt")
    return result


if __name__ == "__main__":
    main()
