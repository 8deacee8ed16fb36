"""LPG2vec: each property encoder on hand values (and pandas' qcut), the LPG encoder's fit/transform rules and
saved state, the Neo4j CSV and networkx sources, the GCN against PyG's GCNConv, and effplug's QAT and compressed
activations on the GNN."""

import logging
import math

import pytest
import torch

from effplug.graphs import (
    GCN,
    CategoryEncoder,
    HashingNgramEmbedder,
    LargeNumberEncoder,
    LPGEncoder,
    NumberToBinEncoder,
    NumericalEncoder,
    StringEncoder,
    degree_features,
    from_networkx,
    normalized_adjacency,
    read_neo4j_csv,
    split_masks,
    synthetic_lpg,
    to_undirected,
    train_node_classifier,
)


def test_numeric_encoders_scale_clip_and_mark_missing():
    enc = NumericalEncoder("age").fit([20, 40, None, 60])
    out = enc.transform([30, None, 100, float("nan")])
    assert out.tolist() == [[0.25, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]  # 100 is past the fitted max: clipped
    big = LargeNumberEncoder("balance").fit([1.0, 1e6])
    mid = math.log1p(1e3)
    assert big.transform([1e3])[0, 0].item() == pytest.approx((mid - math.log1p(1)) / (math.log1p(1e6) - math.log1p(1)))
    with pytest.raises(ValueError, match="'x' is not a number; encode this property as 'category'"):
        NumericalEncoder("age").fit(["x"])
    infinite = LargeNumberEncoder("balance").fit([1.0, float("inf"), 100.0])
    assert (infinite.low, infinite.high) == (math.log1p(1.0), math.log1p(100.0))  # inf did not stretch the range
    assert infinite.transform([float("-inf")]).tolist() == [[0.0, 1.0]] and torch.isfinite(infinite.transform(
        [float("inf"), 10.0])).all()


def test_number_to_bin_matches_pandas_qcut():
    pd = pytest.importorskip("pandas")
    gen = torch.Generator().manual_seed(0)
    values = (torch.randn(200, generator=gen) * 3).tolist()
    enc = NumberToBinEncoder("v", bins=5).fit(values)
    ours = enc.transform(values)[:, :-1].argmax(1)
    theirs = torch.tensor(pd.qcut(values, 5, labels=False, duplicates="drop"))
    assert torch.equal(ours, theirs)
    out = enc.transform([None, -100.0, 100.0])
    assert out[0, -1] == 1 and out[0, :-1].sum() == 0 and out[1, 0] == 1 and out[2, -2] == 1


def test_category_multi_hot_with_unknown_and_the_top_k():
    enc = CategoryEncoder("labels").fit([["Person"], ["Person", "Flagged"], "Company;Flagged", None])
    assert enc.columns == ["labels=Company", "labels=Flagged", "labels=Person", "labels:unknown"]
    assert enc.transform([["Flagged", "Person"], ["Alien"], None]).tolist() == [[0, 1, 1, 0], [0, 0, 0, 1],
                                                                                [0, 0, 0, 0]]
    top = CategoryEncoder("c", max_categories=1).fit(["a", "a", "b"])
    assert top.vocabulary == ["a"] and top.transform(["b"]).tolist() == [[0, 1]]


def test_string_encoder_is_deterministic_and_pluggable():
    enc = StringEncoder("name").fit(["x"])
    a, b = enc.transform(["Kalo Ten AG", None]), enc.transform(["kalo ten ag", "Kalo Ten AG"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], b[1]) and a[1, -1] == 1 and a[1, :-1].abs().sum() == 0
    assert a[0, :-1].norm().item() == pytest.approx(1.0) and enc.width == 65
    custom = StringEncoder("name", embedder=lambda texts: torch.tensor([[float(len(t))] for t in texts])).fit(["x"])
    assert custom.transform(["abc"]).tolist() == [[3.0, 0.0]]
    bad = StringEncoder("name", embedder=lambda texts: torch.zeros(3)).fit
    with pytest.raises(ValueError, match="must return \\[len\\(texts\\), dim\\]"):
        bad(["x"])
    assert HashingNgramEmbedder(8, 2)(["ab"]).shape == (1, 8)


def _rows():
    vertices = [{"id": 1, "labels": ["Person"], "age": 30, "city": "Bern", "meta": {"a": 1}, "fraud": 1},
                {"id": 2, "labels": ["Person", "VIP"], "age": None, "city": "Basel", "meta": {"b": 2}, "fraud": 0},
                {"id": 3, "labels": ["Company"], "age": 50, "city": "Bern", "meta": None, "fraud": 0}]
    edges = [{"source": 1, "target": 2, "type": "KNOWS", "since": 2001},
             {"source": 3, "target": 1, "type": "OWNS"}]
    return vertices, edges


def test_lpg_encoder_fit_transform_rules(caplog):
    vertices, edges = _rows()
    with caplog.at_level(logging.INFO, logger="effplug.graphs"):
        enc = LPGEncoder(exclude=["fraud"]).fit(vertices, edges)
    assert "vertex properties left out (no encoder for their values): {'meta': 'dict'}" in caplog.text
    assert [e.kind for e in enc.nodes.encoders.values()] == ["numerical", "category"]  # meta and fraud are out
    assert not any("fraud" in c for c in enc.nodes.columns)
    new = [{"id": "a", "labels": ["Robot"], "city": "Zug"}, {"id": "b", "labels": ["Person"], "age": 40}]
    f = enc.transform(new, [{"source": "a", "target": "b", "type": "HATES"}])
    row = dict(zip(f.node_columns, f.x[0].tolist(), strict=True))
    assert row["labels:unknown"] == 1 and row["city:unknown"] == 1 and row["age:missing"] == 1
    row = dict(zip(f.node_columns, f.x[1].tolist(), strict=True))
    assert row["labels=Person"] == 1 and row["age"] == pytest.approx(0.5) and row["city:unknown"] == 0
    assert f.edge_index.tolist() == [[0], [1]] and dict(zip(f.edge_columns, f.edge_attr[0].tolist(),
                                                            strict=True))["type:unknown"] == 1
    with pytest.raises(ValueError, match="1 edges name vertices that are not in the vertex table"):
        enc.transform(vertices, [{"source": 1, "target": 99}])
    with pytest.raises(RuntimeError, match="not fitted"):
        LPGEncoder().transform(vertices)
    with pytest.raises(ValueError, match="kind 'text' is not one of"):
        LPGEncoder(node_properties={"city": "text"}).fit(vertices)
    with pytest.raises(ValueError, match="no training row has them"):
        LPGEncoder(node_properties={"ciyt": "category"}).fit(vertices)


def test_lpg_encoder_state_round_trips_as_plain_data(tmp_path):
    pd = pytest.importorskip("pandas")
    vertices, edges, _ = synthetic_lpg(60, seed=1)
    enc = LPGEncoder(node_properties={"balance": "number_to_bin", "age": "numerical", "country": "category",
                                      "name": "string"}, bins=4).fit(pd.DataFrame(vertices[:40]), edges)
    path = tmp_path / "lpg.pt"
    enc.save(path)
    loaded = LPGEncoder.load(path)
    a, b = enc.transform(vertices, edges), loaded.transform(pd.DataFrame(vertices), pd.DataFrame(edges))
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_attr, b.edge_attr) and a.node_columns == b.node_columns
    assert torch.equal(a.edge_index, b.edge_index)


def test_neo4j_csv_and_networkx_sources_give_the_same_features(tmp_path):
    nx = pytest.importorskip("networkx")
    (tmp_path / "nodes.csv").write_text("personId:ID,name,age:int,score:float,vip:boolean,tags:string[],:LABEL\n"
                                        "p1,Ann,31,0.5,true,a;b,Person;VIP\n"
                                        "p2,Bob,,1.5,false,,Person\n"
                                        "c1,Acme,,2.0,false,b,Company\n")
    (tmp_path / "rels.csv").write_text(":START_ID,:END_ID,:TYPE,since:int\np1,p2,KNOWS,2001\nc1,p1,EMPLOYS,\n")
    vertices, edges = read_neo4j_csv(tmp_path / "nodes.csv", tmp_path / "rels.csv")
    assert vertices[0] == {"id": "p1", "labels": ["Person", "VIP"], "name": "Ann", "age": 31, "score": 0.5,
                           "vip": True, "tags": ["a", "b"]}
    assert vertices[1]["age"] is None and edges[1] == {"source": "c1", "target": "p1", "type": "EMPLOYS",
                                                       "since": None}
    graph = nx.DiGraph()
    for v in vertices:
        graph.add_node(v["id"], **{k: val for k, val in v.items() if k != "id"})
    for e in edges:
        graph.add_edge(e["source"], e["target"], **{k: val for k, val in e.items() if k not in ("source", "target")})
    nv, ne = from_networkx(graph)
    a = LPGEncoder().fit_transform(vertices, edges)
    b = LPGEncoder().fit_transform(nv, ne)
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.edge_index, b.edge_index)
    (tmp_path / "bad.csv").write_text("id:ID,age:int\nx,old\n")
    with pytest.raises(ValueError, match="bad.csv:2: 'old' in column 'age' is not a int"):
        read_neo4j_csv(tmp_path / "bad.csv")
    (tmp_path / "noid.csv").write_text("name\nx\n")
    with pytest.raises(ValueError, match="no ':ID' column"):
        read_neo4j_csv(tmp_path / "noid.csv")


def test_gcn_layer_matches_pyg_gcnconv_and_to_pyg():
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    vertices, edges, y = synthetic_lpg(40, seed=2)
    f = LPGEncoder().fit_transform(vertices, edges)
    edge_index = to_undirected(f.edge_index)
    torch.manual_seed(0)
    ours = GCN(f.x.shape[1], 8, 3, layers=1, dropout=0.0)
    conv = pyg_nn.GCNConv(f.x.shape[1], 3)
    with torch.no_grad():
        conv.lin.weight.copy_(ours.layers[0].linear.weight)
        conv.bias.copy_(torch.randn(3))
        ours.layers[0].bias.copy_(conv.bias)
    expected = conv(f.x, edge_index)
    assert torch.allclose(ours(f.x, normalized_adjacency(edge_index, len(vertices))), expected, atol=1e-5)
    data = f.to_pyg(y)
    assert data.num_nodes == 40 and torch.equal(data.edge_index, f.edge_index) and torch.equal(data.y, y)


def test_to_pyg_without_the_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
    vertices, edges = _rows()
    with pytest.raises(ImportError, match=r"pip install 'effplug\[graphs\]'"):
        LPGEncoder(exclude=["fraud", "meta"]).fit_transform(vertices, edges).to_pyg()


def test_lpg_features_carry_the_rule_and_effplug_trains_the_gcn():
    from effplug.compress import compressed_activations
    from effplug.profile import saved_bytes
    from effplug.quant import QATConfig, quantize_model, quantized_layers

    vertices, edges, y = synthetic_lpg(400, seed=0)
    masks = split_masks(len(vertices), seed=0)
    train_vertices = [v for v, keep in zip(vertices, masks["train"].tolist(), strict=True) if keep]
    f = LPGEncoder().fit(train_vertices, edges).transform(vertices, edges)
    edge_index = to_undirected(f.edge_index)
    adjacency = normalized_adjacency(edge_index, len(vertices))
    results = {}
    for name, x in (("lpg", f.x), ("structure", degree_features(edge_index, len(vertices)))):
        torch.manual_seed(0)
        results[name] = train_node_classifier(GCN(x.shape[1], 32, 3), x, adjacency, y, masks, epochs=100)["test"]
    assert results["lpg"] > results["structure"] + 0.2 and results["lpg"] > 0.8
    torch.manual_seed(0)
    model = quantize_model(GCN(f.x.shape[1], 32, 3), QATConfig(weight_bits=4, act_bits=8, first_last_bits=None))
    assert len(quantized_layers(model)) == 2
    assert train_node_classifier(model, f.x, adjacency, y, masks, epochs=100)["test"] > results["lpg"] - 0.1
    torch.manual_seed(0)
    model = GCN(f.x.shape[1], 32, 3)
    exact = saved_bytes(lambda: model(f.x, adjacency).sum(), parameters=model)  # the sparse adjacency counts too
    assert exact.activation_bytes > 0 and exact.saved_tensors == 7
    with compressed_activations(model, bits=2, min_numel=64, scope="model") as engine:
        accuracy = train_node_classifier(model, f.x, adjacency, y, masks, epochs=100)["test"]
        report = engine.last_report
    assert accuracy > results["lpg"] - 0.1 and 0 < report.held_bytes < report.original_bytes / 4


def test_recipe_trains_the_gcn_from_a_neo4j_export(tmp_path):
    import importlib.util
    from pathlib import Path

    vertices, edges, y = synthetic_lpg(120, seed=3)
    lines = ["vid:ID,balance:double,age:int,country,name,rating:int,fraud:int,:LABEL"]
    for v, c in zip(vertices, y.tolist(), strict=True):
        age = "" if v["age"] is None else v["age"]
        lines.append(f"{v['id']},{v['balance']},{age},{v['country']},{v['name']},{v['rating']},{c},"
                     f"{';'.join(v['labels'])}")
    (tmp_path / "nodes.csv").write_text("\n".join(lines) + "\n")
    rels = [":START_ID,:END_ID,:TYPE,amount:double"] + [
        f"{e['source']},{e['target']},{e['type']},{e.get('amount', '')}" for e in edges]
    (tmp_path / "rels.csv").write_text("\n".join(rels) + "\n")
    spec = importlib.util.spec_from_file_location("lpg2vec_gcn", Path(__file__).parents[1] / "recipes" /
                                                  "lpg2vec_gcn.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    result = recipe.main(["--nodes", str(tmp_path / "nodes.csv"), "--relationships", str(tmp_path / "rels.csv"),
                          "--target", "fraud", "--epochs", "60", "--out", str(tmp_path / "out")])
    assert result["test"] > 0.6  # the rule is learnable from the exported labels and properties
    loaded = LPGEncoder.load(tmp_path / "out" / "encoder.pt")
    assert not any(c.startswith("fraud") for c in loaded.nodes.columns)
