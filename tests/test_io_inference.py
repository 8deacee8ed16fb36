"""The I/O model of sparse FFN inference: the lower bound holds and is tight, the layer order with Belady is
within 2x of it on every small DAG enumerated, annealing never loses, the generator meets the bound, and the
blocked executor computes the network."""

import itertools

import pytest
import torch

from effplug.sparse.io import (
    BlockedExecutor,
    SparseFFN,
    anneal_order,
    check_order,
    io_efficient_network,
    random_sparse_ffn,
    simulate_io,
)


def _all_small_dags(n_in=2, n_neurons=3):
    """Every DAG with n_in inputs and n_neurons neurons (each neuron reads a nonempty set of lower ids)."""
    choices = []
    for i in range(n_neurons):
        ids = range(n_in + i)
        choices.append([list(c) for r in range(1, len(ids) + 1) for c in itertools.combinations(ids, r)])
    for preds in itertools.product(*choices):
        net = SparseFFN(n_in, [list(p) for p in preds])
        if all(net.succ_count[u] for u in range(n_in)):
            yield net


def test_bound_holds_is_tight_and_the_layer_order_is_within_2x_on_every_small_dag():
    checked = 0
    for net in _all_small_dags():
        for memory in range(2, 7):
            for policy in ("belady", "lru"):
                cost = simulate_io(net, memory=memory, policy=policy)
                assert cost["total"] >= cost["lower_bound"]
            belady = simulate_io(net, memory=memory)
            assert belady["total"] <= 2 * belady["lower_bound"], (net.preds, memory)
            checked += 1
        assert simulate_io(net, memory=64)["total"] == net.lower_bound()  # everything fits: the bound is met
    assert checked == 273 * 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_ffns_stay_within_2x_and_belady_beats_lru(seed):
    net = random_sparse_ffn([24, 32, 32, 10], 0.25, seed=seed)
    for memory in (3, 6, 12, 24, 48):
        belady, lru = simulate_io(net, memory=memory), simulate_io(net, memory=memory, policy="lru")
        assert belady["lower_bound"] <= belady["total"] <= 2 * belady["lower_bound"]
        assert belady["loads"] <= lru["loads"]


def test_annealing_never_returns_a_worse_order_and_finds_a_better_one():
    net = random_sparse_ffn([20, 30, 30, 10], 0.2, seed=1)
    start = simulate_io(net, memory=8)["total"]
    order, cost = anneal_order(net, 8, steps=400, seed=0)
    check_order(net, order)
    assert cost["total"] < start and cost["total"] >= cost["lower_bound"]


@pytest.mark.parametrize("sizes", [(10, 40, 5, 120, 6), (5, 60, 20, 200, 10), (8, 30, 3, 60, 4)])
def test_generated_networks_meet_the_lower_bound(sizes):
    n_in, n_neurons, n_out, connections, memory = sizes
    net = io_efficient_network(n_in, n_neurons, n_out, connections, memory, seed=3)
    assert (net.n_in, net.n_neurons, len(net.outputs()), net.n_connections) == sizes[:4]
    cost = simulate_io(net, memory=memory)
    assert cost["total"] == cost["lower_bound"] and cost["spill_writes"] == 0


def test_bad_input_says_what_to_do():
    net = random_sparse_ffn([4, 4, 2], 0.5)
    with pytest.raises(ValueError, match="use one of belady, lru"):
        simulate_io(net, policy="fifo")
    with pytest.raises(ValueError, match="must be topological"):
        check_order(net, list(reversed(range(4, 10))))
    with pytest.raises(ValueError, match="connections=999: this construction places between"):
        io_efficient_network(10, 40, 5, 999, memory=6)


@pytest.mark.parametrize("memory", [4, 16, 1000])
def test_blocked_executor_equals_the_pruned_mlp(memory):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(12, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 5)]
    for layer in layers:
        layer.weight.data *= torch.rand_like(layer.weight) < 0.3
    net = SparseFFN.from_linears(layers)
    x = torch.randn(7, 12)
    expected = layers[2](torch.relu(layers[1](torch.relu(layers[0](x)))))
    order, _ = anneal_order(net, 8, steps=50)
    for o in (None, order):
        torch.testing.assert_close(BlockedExecutor(net, o, memory)(x), expected, rtol=1e-5, atol=1e-5)
