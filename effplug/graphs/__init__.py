"""LPG2vec (Besta et al., "Neural Graph Databases", LoG 2022): features for labeled property graphs, their
sources (Neo4j CSV, networkx), a synthetic graph with a known rule, and a small GCN. Plain torch: pandas,
networkx and torch_geometric (``pip install 'effplug[graphs]'``) are only needed where they are named."""

from effplug.graphs.encoders import (
    KINDS,
    CategoryEncoder,
    HashingNgramEmbedder,
    LargeNumberEncoder,
    NumberToBinEncoder,
    NumericalEncoder,
    PropertyEncoder,
    StringEncoder,
)
from effplug.graphs.gcn import GCN, degree_features, normalized_adjacency, to_undirected
from effplug.graphs.lpg import LPGEncoder, LPGFeatures
from effplug.graphs.node_classification import split_masks, train_node_classifier
from effplug.graphs.sources import from_networkx, read_neo4j_csv
from effplug.graphs.synthetic import synthetic_lpg

__all__ = ["GCN", "KINDS", "CategoryEncoder", "HashingNgramEmbedder", "LPGEncoder", "LPGFeatures",
           "LargeNumberEncoder", "NumberToBinEncoder", "NumericalEncoder", "PropertyEncoder", "StringEncoder",
           "degree_features", "from_networkx", "normalized_adjacency", "read_neo4j_csv", "split_masks",
           "synthetic_lpg", "to_undirected", "train_node_classifier"]
