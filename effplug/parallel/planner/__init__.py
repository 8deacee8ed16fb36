"""``effplug plan``'s topology-aware planner: alpha-beta collectives, topologies (fat tree, torus, HammingMesh,
a measured link), and the ranking of DP x PP x ZeRO x compressor layouts. A model: docs/plan.md states its
error against the step times measured here."""

from effplug.parallel.planner.collectives import (
    Link,
    all_gather,
    p2p,
    reduce_scatter,
    ring_allreduce,
    tree_allreduce,
)
from effplug.parallel.planner.layouts import COMPRESSORS, LayoutCost, Workload, evaluate, rank_layouts
from effplug.parallel.planner.report import format_layouts, network_costs
from effplug.parallel.planner.topologies import (
    FatTree,
    HammingMesh,
    Measured,
    NetworkCost,
    Torus,
    fat_tree_cost,
    parse_topology,
)

__all__ = ["COMPRESSORS", "FatTree", "HammingMesh", "LayoutCost", "Link", "Measured", "NetworkCost", "Torus",
           "Workload", "all_gather", "evaluate", "fat_tree_cost", "format_layouts", "network_costs", "p2p",
           "parse_topology", "rank_layouts", "reduce_scatter", "ring_allreduce", "tree_allreduce"]
