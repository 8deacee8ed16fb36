"""LPG2vec ablation on the synthetic labeled property graph: a 2-layer GCN on structure only (degree features)
vs LPG2vec features, with labels and properties separately, and effplug's QAT and compressed activations on the
LPG2vec model (the plain-loop doors, ``quantize_model`` and ``compressed_activations``).

    python benchmarks/lpg2vec.py                 # 3 seeds, 1000 vertices, 200 epochs
    python benchmarks/lpg2vec.py --quick

Each seed draws its own graph (``synthetic_lpg(seed=...)``), split 60/20/20; the encoder is fitted on the
training vertices; the test accuracy is that of the best validation epoch. Prints a Markdown table and writes
JSON (machine, versions, command line, every run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effplug.compress import compressed_activations  # noqa: E402
from effplug.graphs import (  # noqa: E402
    GCN,
    LPGEncoder,
    degree_features,
    normalized_adjacency,
    split_masks,
    synthetic_lpg,
    to_undirected,
    train_node_classifier,
)
from effplug.profile import saved_bytes, write_report  # noqa: E402
from effplug.quant import QATConfig, quantize_model  # noqa: E402

ROWS = ("structure only (degree)", "labels only", "properties only", "LPG2vec (labels + properties)",
        "LPG2vec + QAT W4A8", "LPG2vec + ActNN 2-bit activations")


def run(seed: int, vertices_n: int, epochs: int) -> list:
    vertices, edges, y = synthetic_lpg(vertices_n, seed=seed)
    masks = split_masks(len(vertices), seed=seed)
    train_vertices = [v for v, keep in zip(vertices, masks["train"].tolist(), strict=True) if keep]
    edge_index = None
    inputs = {}
    for name, encoder in (("labels only", LPGEncoder(node_properties={})),
                          ("properties only", LPGEncoder(labels=False)),
                          ("LPG2vec (labels + properties)", LPGEncoder())):
        features = encoder.fit(train_vertices, edges).transform(vertices, edges)
        edge_index = to_undirected(features.edge_index)
        inputs[name] = features.x
    inputs["structure only (degree)"] = degree_features(edge_index, len(vertices))
    adjacency = normalized_adjacency(edge_index, len(vertices))
    rows = []
    for name in ROWS:
        x = inputs.get(name, inputs["LPG2vec (labels + properties)"])
        torch.manual_seed(seed)
        model = GCN(x.shape[1], 64, 3)
        if name.endswith("QAT W4A8"):
            quantize_model(model, QATConfig(weight_bits=4, act_bits=8, first_last_bits=None))
        start = time.perf_counter()
        report = None
        if name.endswith("activations"):
            with compressed_activations(model, bits=2, min_numel=64, scope="model") as engine:
                result = train_node_classifier(model, x, adjacency, y, masks, epochs=epochs)
                report = engine.last_report
        else:
            result = train_node_classifier(model, x, adjacency, y, masks, epochs=epochs)
        wall = time.perf_counter() - start
        # what one training forward saves for backward (input features and sparse adjacency included), measured
        # after training so the meter's forward cannot move observers or the dropout stream
        model.train()
        exact = saved_bytes(lambda m=model, x=x: m(x, adjacency).sum(), parameters=model).activation_bytes
        held = exact if report is None else exact - report.original_bytes + report.held_bytes
        rows.append({"seed": seed, "model": name, "features": x.shape[1], "test_accuracy": result["test"],
                     "val_accuracy": result["val"], "saved_bytes": held, "exact_saved_bytes": exact,
                     "wall_s": wall})
    return rows


def table(rows: list) -> str:
    lines = ["| model | input features | seeds | test accuracy % (mean [min, max]) | vs structure only | "
             "saved activations KB |", "|---|---|---|---|---|---|"]
    base = statistics.mean(r["test_accuracy"] for r in rows if r["model"] == ROWS[0])
    for name in ROWS:
        runs = [r for r in rows if r["model"] == name]
        acc = [100 * r["test_accuracy"] for r in runs]
        lines.append(f"| {name} | {runs[0]['features']} | {len(runs)} | {statistics.mean(acc):.1f} "
                     f"[{min(acc):.1f}, {max(acc):.1f}] | {statistics.mean(acc) - 100 * base:+.1f} pt | "
                     f"{statistics.mean(r['saved_bytes'] for r in runs) / 1024:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one seed, 300 vertices, 30 epochs (a smoke run)")
    parser.add_argument("--json", default="bench_out/lpg2vec.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.vertices, args.epochs = [0], 300, 30
    rows, start = [], time.perf_counter()
    for i, seed in enumerate(args.seeds):
        rows += run(seed, args.vertices, args.epochs)
        print(f"[{i + 1}/{len(args.seeds)}] seed {seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
              flush=True)
    print(table(rows))
    write_report(args.json, rows, epochs=args.epochs, vertices=args.vertices)


if __name__ == "__main__":
    main()
