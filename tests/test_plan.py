"""The topology-aware planner: closed-form collectives and bubbles, network costs, HammingMesh's two full-bandwidth
dimensions, the ranking and its errors, the measured gloo link, and ``effplug plan --topology``."""

import math

import pytest

from effplug import cli
from effplug.parallel.planner import (
    FatTree,
    HammingMesh,
    Link,
    Torus,
    Workload,
    all_gather,
    evaluate,
    fat_tree_cost,
    p2p,
    parse_topology,
    rank_layouts,
    reduce_scatter,
    ring_allreduce,
    tree_allreduce,
)
from effplug.parallel.planner.measure import fit_ring


def test_collectives_match_their_closed_forms():
    bandwidth = Link(0.0, 1e9)
    for n in (2, 3, 8, 64):
        assert ring_allreduce(n, 1e9, bandwidth) == pytest.approx(2 * (n - 1) / n)
        assert reduce_scatter(n, 1e9, bandwidth) * 2 == pytest.approx(ring_allreduce(n, 1e9, bandwidth))
    latency = Link(1e-6, 1e12)
    assert ring_allreduce(4, 0, latency) == pytest.approx(6e-6)  # 2(p-1) alphas
    assert tree_allreduce(8, 1e6, Link(0.0, 1e9)) == pytest.approx(2 * 3 * 1e-3)
    assert all_gather(4, 1e6, Link(1e-6, 1e9)) == pytest.approx(3 * (1e-6 + 1e-3))
    assert p2p(1e6, Link(1e-6, 1e9)) == pytest.approx(1e-6 + 1e-3) and ring_allreduce(1, 1e9, bandwidth) == 0
    with pytest.raises(ValueError, match="bytes=nan"):
        ring_allreduce(2, float("nan"), bandwidth)
    with pytest.raises(ValueError, match="beta > 0"):
        Link(1e-6, 0)
    assert Link.gbit(100, 2).beta == 12.5e9


def test_pipeline_bubble_and_compute_follow_the_formulas():
    work = Workload(1e9, global_batch=64, seq_len=1024, peak_tflops=100, mfu=0.5)
    topology = FatTree(8, Link.gbit(100))
    row = evaluate(work, topology, dp=2, pp=4, zero=0)
    assert row.microbatches == 32 and row.bubble == pytest.approx(3 / (32 + 3))  # (p-1)/(m+p-1)
    assert row.compute_s == pytest.approx(6 * 1e9 * 64 * 1024 / (8 * 100e12 * 0.5))
    flat = evaluate(work, topology, dp=8, pp=1, zero=0)
    assert flat.bubble == 0 and flat.pipeline_s == 0
    assert flat.gradient_s == pytest.approx(ring_allreduce(8, 4e9, topology.link))
    zero3 = evaluate(work, topology, dp=8, pp=1, zero=3)
    assert zero3.gradient_s == pytest.approx(1.5 * flat.gradient_s) and zero3.memory_gib < flat.memory_gib
    topk = evaluate(work, topology, dp=8, pp=1, zero=0, compressor="topk1%")
    assert topk.gradient_s == pytest.approx(all_gather(8, 0.01 * 1e9 * 8, topology.link))
    assert evaluate(work, topology, dp=8, pp=1, zero=0, compressor="cgx4").gradient_s == pytest.approx(
        ring_allreduce(8, 4e9 / 7.0, topology.link))
    assert evaluate(Workload(1e9, global_batch=60), topology, 8, 1, 0) is None  # 60 sequences do not split 8 ways
    from effplug.parallel.schedules import analytic_bubble

    chimera = evaluate(work, topology, dp=2, pp=4, zero=0, schedule="chimera")
    assert chimera.bubble == pytest.approx(analytic_bubble("chimera", 4, 32)) and chimera.bubble < row.bubble
    assert chimera.gradient_s == pytest.approx(ring_allreduce(2, 2 * 4e9 / 4, topology.link))  # two stages each
    assert row.gradient_s == pytest.approx(ring_allreduce(2, 4e9 / 4, topology.link))
    tensor = evaluate(work, topology, dp=1, pp=4, zero=0, tp=2)  # Megatron: 4 all-reduces per layer and micro-batch
    layers, hidden = work.model_layers, work.model_hidden
    assert tensor.tensor_s == pytest.approx(layers / 4 * 64 * 4 * ring_allreduce(2, 1024 * hidden * 2, topology.link))
    assert tensor.gradient_s == 0 and tensor.label == "DP1 x PP4 1f1b x TP2 DDP"
    assert tensor.memory_gib < evaluate(work, topology, dp=2, pp=4, zero=0).memory_gib  # TP splits the weights


def test_network_costs():
    assert fat_tree_cost(64, 64) == fat_tree_cost(64, 64, 2.0)  # one switch: nothing to taper
    full = fat_tree_cost(4096, 64)
    assert (full.switch_ports, full.cables, full.switches) == (5 * 4096, 3 * 4096, 128 + 128 + 64)
    tapered = fat_tree_cost(4096, 64, 2.0)
    assert tapered.switch_ports < full.switch_ports and tapered.cables < full.cables
    mesh = HammingMesh(4096, Link.gbit(100), (4, 4))
    assert mesh.grid == (16, 16) and mesh.cost().switch_ports == 4096 and mesh.cost().board_links == 256 * 24
    assert Torus(64, Link.gbit(100), (8, 8)).cost().cables == 128


def test_hammingmesh_gives_two_dimensions_full_bandwidth():
    link = Link.gbit(100)
    mesh = HammingMesh(64, link, (4, 4), (2, 2))  # rows and columns of 8 accelerators
    dp_link, pp_link = mesh.links(8, 8)
    assert dp_link.beta == pp_link.beta == 2 * link.beta
    dp_link, pp_link = mesh.links(16, 4)  # DP spans two rows: it shares the column ports
    assert dp_link.beta == link.beta and pp_link.beta == link.beta
    fat = FatTree(64, link, 2.0, radix=16)
    assert fat.links(8, 8) == (link, Link(link.alpha, link.beta / 2))  # PP leaves the 8-port leaf
    torus = Torus(64, link, (8, 8))
    assert torus.links(8, 8)[0].beta == 2 * link.beta and torus.links(4, 16)[0].beta == link.beta
    with pytest.raises(ValueError, match="not a whole number of 4x4 boards"):
        HammingMesh(24, link, (4, 4))
    with pytest.raises(ValueError, match="has 16 nodes, not --gpus 64"):
        parse_topology("torus:4x4", 64, link)
    with pytest.raises(ValueError, match="choose fattree"):
        parse_topology("dragonfly", 64, link)


def test_ranking_puts_fitting_layouts_first_and_says_when_nothing_fits():
    work = Workload(7e9, global_batch=256, gpu_mem_gb=40)
    rows = rank_layouts(work, parse_topology("hammingmesh:4x4", 64, Link.gbit(100)))
    fits = [r.fits for r in rows]
    assert fits[0] and fits == sorted(fits, reverse=True)
    first = [r.step_s for r in rows if r.fits]
    assert first == sorted(first) and all(r.memory_gib <= 0.9 * 40 for r in rows if r.fits)
    with pytest.raises(ValueError, match="no layout splits global_batch=7"):
        rank_layouts(Workload(1e9, global_batch=7), FatTree(8, Link.gbit(100)), max_tp=1)  # TP8 would split it
    with pytest.raises(ValueError, match="params=-1.0"):
        Workload(-1.0)


def test_the_ring_fit_recovers_alpha_and_beta_and_gloo_is_measured():
    link = Link(5e-5, 2e9)
    sizes = [2**12, 2**16, 2**20, 2**24]
    seconds = [ring_allreduce(4, s, link) for s in sizes]
    fitted = fit_ring(4, sizes, seconds)
    assert fitted.alpha == pytest.approx(link.alpha, rel=1e-6) and fitted.beta == pytest.approx(link.beta, rel=1e-6)
    from effplug.parallel.planner.measure import measure_link

    measured, times = measure_link(2, sizes=(2**12, 2**20, 2**22), repeats=3)
    # a real gloo measurement: positive, finite times and fit (their order is a timing, and timings are not
    # asserted: on a loaded 2-core machine a 4 MB all-reduce has come in under a 4 KB one)
    assert len(times) == 3 and all(math.isfinite(t) and t > 0 for t in times)
    assert math.isfinite(measured.alpha) and measured.alpha >= 0 and measured.beta > 0


def test_effplug_plan_with_a_topology(capsys):
    assert cli.main(["plan", "--params", "7e9", "--gpus", "64", "--topology", "hammingmesh:4x4", "--link",
                     "100"]) == 0
    out = capsys.readouterr().out
    assert "| rank | layout |" in out and "fastest layout that fits:" in out and "HammingMesh 4x4 boards" in out
    assert "| fat tree 1:1 |" in out and "A model, not a measurement" in out
    assert cli.main(["plan", "--params", "nan", "--gpus", "64", "--topology", "fattree"]) == 2
    assert "--params nan: use a positive, finite number" in capsys.readouterr().err
    assert cli.main(["plan", "--params", "7e9", "--gpus", "64", "--topology", "torus:4x4"]) == 2
    assert "not --gpus 64" in capsys.readouterr().err
    assert cli.main(["plan", "--params", "1e12", "--gpus", "8", "--topology", "fattree"]) == 0
    assert "nothing fits in 90% of 80 GiB" in capsys.readouterr().out


def test_a_workload_from_an_instantiated_model():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=128))
    work = Workload.from_model(model, global_batch=8, seq_len=32)
    assert work.params == sum(p.numel() for p in model.parameters()) and (work.model_hidden, work.model_layers) == (64, 3)
    assert rank_layouts(work, FatTree(4, Link.gbit(10)))[0].fits
