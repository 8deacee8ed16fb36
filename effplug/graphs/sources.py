"""Graph sources for :class:`effplug.graphs.LPGEncoder`: a Neo4j export in the ``neo4j-admin import`` CSV
layout, and a networkx graph. Both return ``(vertex_rows, edge_rows)``: lists of dicts with ``id``/``labels``
and ``source``/``target``/``type`` plus one key per property.

The Neo4j layout: a node file with an ``:ID`` column (``personId:ID`` or ``:ID(Person)``), a ``:LABEL`` column
of ``;``-separated labels and typed property columns (``age:int``, ``score:float``, ``active:boolean``,
``tags:string[]``); a relationship file with ``:START_ID``, ``:END_ID``, ``:TYPE`` and typed properties.
Empty cells are missing values.
"""

from __future__ import annotations

import csv
from pathlib import Path

_CASTS = {"int": int, "long": int, "short": int, "byte": int, "float": float, "double": float,
          "boolean": lambda s: s.strip().lower() == "true", "string": str}


def _header(field: str, path) -> tuple[str, str, bool]:
    """(property name or a role such as ':ID', type name, is_array) of one header cell."""
    name, _, kind = field.partition(":")
    if not kind:
        return name, "string", False
    role = kind.split("(")[0].upper()
    if role in ("ID", "LABEL", "START_ID", "END_ID", "TYPE", "IGNORE"):
        return f":{role}", "string", False
    array = kind.endswith("[]")
    kind = kind.removesuffix("[]").lower()
    if kind not in _CASTS:
        raise ValueError(f"{path}: column {field!r} has type {kind!r}; Neo4j's types here are {sorted(_CASTS)}")
    return name, kind, array


def _read(path, array_delimiter: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            fields = [_header(f, path) for f in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty; a Neo4j import file starts with its header row") from None
        rows = []
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(fields):
                raise ValueError(f"{path}:{line}: {len(cells)} cells under a {len(fields)}-column header")
            row = {}
            for (name, kind, array), cell in zip(fields, cells, strict=True):
                if name == ":IGNORE":
                    continue
                if cell == "":
                    row[name] = None
                elif array:
                    row[name] = [_CASTS[kind](c) for c in cell.split(array_delimiter) if c != ""]
                else:
                    try:
                        row[name] = _CASTS[kind](cell)
                    except ValueError:
                        raise ValueError(f"{path}:{line}: {cell!r} in column {name!r} is not a {kind}") from None
            rows.append(row)
    return rows


def read_neo4j_csv(nodes, relationships=None, array_delimiter: str = ";") -> tuple[list[dict], list[dict]]:
    """``(vertex_rows, edge_rows)`` from ``neo4j-admin import`` node and relationship CSV files."""
    vertices = []
    for row in _read(Path(nodes), array_delimiter):
        if ":ID" not in row:
            raise ValueError(f"{nodes}: no ':ID' column (e.g. 'personId:ID'); it names each node")
        out = {"id": row.pop(":ID"), "labels": [t for t in (row.pop(":LABEL", None) or "").split(";") if t]}
        vertices.append({**out, **row})
    edges = []
    for row in _read(Path(relationships), array_delimiter) if relationships is not None else []:
        if ":START_ID" not in row or ":END_ID" not in row:
            raise ValueError(f"{relationships}: a relationship file needs ':START_ID' and ':END_ID' columns")
        edges.append({"source": row.pop(":START_ID"), "target": row.pop(":END_ID"), "type": row.pop(":TYPE", None),
                      **row})
    return vertices, edges


def from_networkx(graph, label_key: str = "labels", type_key: str = "type") -> tuple[list[dict], list[dict]]:
    """``(vertex_rows, edge_rows)`` from a networkx graph: node/edge attributes become properties, the node
    attribute ``label_key`` the labels and the edge attribute ``type_key`` the type. An undirected graph
    gives each edge once; add the reverse edges (or use ``to_undirected`` in the GNN) for message passing."""
    vertices = [{"id": node, "labels": attrs.get(label_key), **{k: v for k, v in attrs.items() if k != label_key}}
                for node, attrs in graph.nodes(data=True)]
    edges = [{"source": u, "target": v, "type": attrs.get(type_key),
              **{k: val for k, val in attrs.items() if k != type_key}} for u, v, attrs in graph.edges(data=True)]
    return vertices, edges
