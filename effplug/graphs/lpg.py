"""``LPGEncoder``: LPG2vec (Besta et al., "Neural Graph Databases", LoG 2022, Sec. 3) for labeled property
graphs. Vertex labels become a multi-hot block, each property goes through the encoder of its kind
(:mod:`effplug.graphs.encoders`), and the blocks are concatenated into one feature row per vertex (and per
edge, with the edge type as its label block), so any GNN takes them as input features.

``encoder = LPGEncoder(exclude=["fraud"]).fit(train_vertices, train_edges)``, then
``features = encoder.transform(vertices, edges)`` gives ``x``, ``edge_index`` and ``edge_attr``;
``features.to_pyg(y)`` makes a torch_geometric ``Data``. Tables are pandas DataFrames, dicts of columns or
lists of row dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from effplug.graphs.encoders import ENCODERS, KINDS, CategoryEncoder, PropertyEncoder, StringEncoder, infer_kind

log = logging.getLogger("effplug.graphs")


def table_rows(table, what: str) -> list[dict]:
    """Rows of a pandas DataFrame, a dict of equal-length columns, or a list of row dicts."""
    if table is None:
        return []
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas, without importing it
        return table.to_dict("records")
    if isinstance(table, Mapping):
        lengths = {len(v) for v in table.values()}
        if len(lengths) > 1:
            raise ValueError(f"{what}: the columns have different lengths {sorted(lengths)}")
        keys = list(table)
        return [dict(zip(keys, values, strict=True)) for values in zip(*table.values(), strict=True)]
    if isinstance(table, Sequence) and all(isinstance(r, Mapping) for r in table):
        return [dict(r) for r in table]
    raise TypeError(f"{what}: give a pandas DataFrame, a dict of columns or a list of row dicts; got "
                    f"{type(table).__name__}")


@dataclass
class LPGFeatures:
    x: torch.Tensor  # [vertices, node features]
    edge_index: torch.Tensor  # [2, edges] int64, positions in ``node_ids``
    edge_attr: torch.Tensor  # [edges, edge features]
    node_ids: list
    node_columns: list[str]
    edge_columns: list[str]

    def to_pyg(self, y: torch.Tensor | None = None):
        """A ``torch_geometric.data.Data`` with ``x``, ``edge_index``, ``edge_attr`` (and ``y``)."""
        from effplug._optional import require

        data = require("torch_geometric.data", extra="graphs")
        return data.Data(x=self.x, edge_index=self.edge_index, edge_attr=self.edge_attr, y=y,
                         num_nodes=len(self.node_ids))


class _TableEncoder:
    """The label block plus one encoder per property, for one table (vertices or edges)."""

    def __init__(self, what: str, label_key: str, reserved: set, properties, exclude, encode_labels: bool,
                 make_encoder: Callable[[str, str], PropertyEncoder]):
        self.what, self.label_key, self.reserved = what, label_key, reserved
        self.requested, self.exclude = properties, set(exclude)
        self.labels = CategoryEncoder(label_key) if encode_labels else None
        self.make_encoder = make_encoder
        self.encoders: dict[str, PropertyEncoder] = {}

    def fit(self, rows: list[dict]) -> None:
        names = list(dict.fromkeys(k for r in rows for k in r if k not in self.reserved and k not in self.exclude))
        requested = self.requested if self.requested is not None else {}
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise ValueError(f"{self.what} properties {unknown} were given kinds but no training row has them; "
                             f"the properties found are {names}")
        skipped = {}
        self.encoders = {}
        for name in (list(requested) if self.requested is not None else names):
            values = [r.get(name) for r in rows]
            spec = requested.get(name)
            if isinstance(spec, PropertyEncoder):
                encoder = spec
            else:
                kind = spec if spec is not None else infer_kind(values)
                if kind is None:
                    skipped[name] = type(next(v for v in values if v is not None)).__name__ \
                        if any(v is not None for v in values) else "always missing"
                    continue
                if kind not in KINDS:
                    raise ValueError(f"{self.what} property {name!r}: kind {kind!r} is not one of {KINDS}")
                encoder = self.make_encoder(name, kind)
            self.encoders[name] = encoder.fit(values)
        if skipped:
            log.warning("effplug.graphs: %s properties left out (no encoder for their values): %s; give them a "
                        "kind in %s_properties to encode them", self.what, skipped, self.what.rstrip("s"))
        if self.labels is not None:
            self.labels.fit([r.get(self.label_key) for r in rows])

    @property
    def blocks(self) -> list[PropertyEncoder]:
        return ([self.labels] if self.labels is not None else []) + list(self.encoders.values())

    def transform(self, rows: list[dict]) -> torch.Tensor:
        if not self.blocks:
            return torch.zeros(len(rows), 0)
        columns = []
        if self.labels is not None:
            columns.append(self.labels.transform([r.get(self.label_key) for r in rows]))
        for name, encoder in self.encoders.items():
            columns.append(encoder.transform([r.get(name) for r in rows]))
        return torch.cat(columns, 1)

    @property
    def columns(self) -> list[str]:
        return [c for block in self.blocks for c in block.columns]

    def state_dict(self) -> dict:
        return {"labels": self.labels.state_dict() if self.labels is not None else {},
                "properties": {n: e.state_dict() for n, e in self.encoders.items()}}

    def load_state_dict(self, state: dict) -> None:
        if self.labels is not None:
            self.labels.load_state_dict(state["labels"])
        self.encoders = {}
        for name, saved in state["properties"].items():
            encoder = self.make_encoder(name, saved["kind"])
            encoder.load_state_dict(saved)
            self.encoders[name] = encoder


class LPGEncoder:
    """LPG2vec features for a labeled property graph.

    node_properties / edge_properties: ``{name: kind or PropertyEncoder}``, kinds from
        ``effplug.graphs.encoders.KINDS``; ``None`` (default) encodes every property found in fit, its kind
        inferred from the values (logged at INFO; anything without an encoder is left out with a WARNING).
    exclude: properties never encoded, such as the prediction target.
    labels / edge_types: encode vertex labels / edge types as multi-hot blocks (LPG2vec's label encoding).
    bins, max_categories, string_embedder: settings of the inferred number-to-bin, category and string
        encoders (``string_embedder``: any callable list[str] -> [n, d] tensor; default hashed n-grams).
    """

    def __init__(self, node_properties: dict | None = None, edge_properties: dict | None = None,
                 exclude: Sequence[str] = (), labels: bool = True, edge_types: bool = True, bins: int = 8,
                 max_categories: int | None = None, string_embedder: Callable | None = None, id_key: str = "id",
                 label_key: str = "labels", source_key: str = "source", target_key: str = "target",
                 type_key: str = "type"):
        self.bins, self.max_categories, self.string_embedder = bins, max_categories, string_embedder
        self.id_key, self.source_key, self.target_key = id_key, source_key, target_key
        self.nodes = _TableEncoder("vertex", label_key, {id_key, label_key}, node_properties, exclude, labels,
                                   self._make_encoder)
        self.edges = _TableEncoder("edge", type_key, {source_key, target_key, type_key}, edge_properties, exclude,
                                   edge_types, self._make_encoder)
        self.fitted = False

    def _make_encoder(self, name: str, kind: str) -> PropertyEncoder:
        if kind == "number_to_bin":
            return ENCODERS[kind](name, bins=self.bins)
        if kind == "category":
            return CategoryEncoder(name, max_categories=self.max_categories)
        if kind == "string":
            return StringEncoder(name, self.string_embedder)
        return ENCODERS[kind](name)

    def fit(self, vertices, edges=None) -> LPGEncoder:
        vertex_rows, edge_rows = table_rows(vertices, "vertices"), table_rows(edges, "edges")
        if not vertex_rows:
            raise ValueError("LPGEncoder.fit needs at least one vertex row")
        self.nodes.fit(vertex_rows)
        self.edges.fit(edge_rows)
        self.fitted = True
        log.info("effplug.graphs: LPG2vec encodes vertex %s and edge %s",
                 {n: f"{e.kind} ({e.width})" for n, e in self.nodes.encoders.items()},
                 {n: f"{e.kind} ({e.width})" for n, e in self.edges.encoders.items()})
        return self

    def transform(self, vertices, edges=None) -> LPGFeatures:
        if not self.fitted:
            raise RuntimeError("LPGEncoder is not fitted; call fit(train_vertices, train_edges) first, or "
                               "load_state_dict() a fitted encoder's state")
        vertex_rows, edge_rows = table_rows(vertices, "vertices"), table_rows(edges, "edges")
        ids = [r.get(self.id_key) for r in vertex_rows]
        if any(i is None for i in ids):
            raise ValueError(f"every vertex row needs its {self.id_key!r}; pass id_key= if the column is named "
                             "differently")
        position = {i: p for p, i in enumerate(ids)}
        if len(position) != len(ids):
            raise ValueError(f"vertex ids repeat ({len(ids) - len(position)} duplicates); each {self.id_key!r} "
                             "must be unique")
        missing = [(r.get(self.source_key), r.get(self.target_key)) for r in edge_rows
                   if r.get(self.source_key) not in position or r.get(self.target_key) not in position]
        if missing:
            raise ValueError(f"{len(missing)} edges name vertices that are not in the vertex table, e.g. "
                             f"{missing[0]}; give both tables from the same graph (or drop those edges)")
        edge_index = torch.tensor([[position[r[self.source_key]] for r in edge_rows],
                                   [position[r[self.target_key]] for r in edge_rows]], dtype=torch.long)
        return LPGFeatures(self.nodes.transform(vertex_rows), edge_index.reshape(2, -1),
                           self.edges.transform(edge_rows), ids, self.nodes.columns, self.edges.columns)

    def fit_transform(self, vertices, edges=None) -> LPGFeatures:
        return self.fit(vertices, edges).transform(vertices, edges)

    def state_dict(self) -> dict:
        """Plain tensors, numbers and strings: ``torch.save`` it, or keep it in a Lightning checkpoint."""
        return {"nodes": self.nodes.state_dict(), "edges": self.edges.state_dict(), "bins": self.bins,
                "max_categories": self.max_categories or 0}

    def load_state_dict(self, state: dict) -> None:
        self.bins, self.max_categories = int(state["bins"]), int(state["max_categories"]) or None
        self.nodes.load_state_dict(state["nodes"])
        self.edges.load_state_dict(state["edges"])
        self.fitted = True

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path, **settings) -> LPGEncoder:
        """A fitted encoder from :meth:`save`; ``settings`` are the constructor's (keys, ``string_embedder``)."""
        encoder = cls(**settings)
        encoder.load_state_dict(torch.load(path, weights_only=True))
        return encoder
