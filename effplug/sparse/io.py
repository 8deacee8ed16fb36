"""The I/O cost of sparse feed-forward inference in a two-level memory, after Gleinig, Ben-Nun and Hoefler
("A Theory of I/O-Efficient Sparse Neural Network Inference", 2023). Only the paper's abstract was available,
so the model, the bounds and the strategies below are derived here and stated in ``docs/io-inference.md``.

**The model.** A network is a DAG of ``n_in`` inputs and neurons, each neuron ``v`` computing
``act(b_v + Σ_(u→v) w_uv x_u)``. Slow memory holds the inputs and the weights, and must end up holding the
outputs (neurons without successors). Fast memory holds ``M ≥ 2`` words: input values, neuron values and the
partial sum of the neuron being computed. An evaluation order (a topological order of the neurons) computes
each neuron in turn, connection by connection in ascending source id: ``x_u`` and the partial sum must be in
fast memory, the weight is streamed (one read, no word held). I/Os:

- loading a value from slow memory: 1;
- reading a weight: 1 (exactly ``|E|`` in every order);
- writing an output once it is computed: 1;
- evicting a neuron's value that is still needed and not yet in slow memory: 1 (a write); afterwards it is clean.

Eviction follows a stated policy: ``"belady"`` (evict the value used furthest in the future; for a fixed
access sequence this minimises loads) or ``"lru"``.

**Lower bound.** ``LB = n_in + |E| + n_out``: every input is read at least once, every weight once, every
output written once, whatever the order and the policy. It is tight: when fast memory holds the working set
the simulated cost equals it (tested), and :func:`io_efficient_network` builds networks that meet it at any M.

**The 2-optimal strategy.** The layer (id) order with Belady eviction. Each connection causes at most one
weight read, one load of its source, and one write of its source (a value is written at most once), so the
cost is at most ``3·LB`` in general; ``tests/test_io_inference.py`` checks ``≤ 2·LB`` exhaustively on all
small DAGs and fast-memory sizes it enumerates, and on random sparse FFNs. Simulated annealing
(:func:`anneal_order`) then searches topological orders for fewer I/Os.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

POLICIES = ("belady", "lru")


@dataclass
class SparseFFN:
    """Inputs ``0 .. n_in - 1``; neuron ``i`` has id ``n_in + i`` and predecessors ``preds[i]`` (ids lower
    than its own), with ``weights[i]`` and ``bias[i]``. The outputs are ``output_ids``, by default the neurons
    without successors (a pruned MLP names its last layer: a hidden neuron that lost every reader is dead)."""

    n_in: int
    preds: list[list[int]]
    weights: list[list[float]] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)
    output_ids: list[int] | None = None  # default: the neurons without successors

    def __post_init__(self):
        if not self.weights:
            self.weights = [[1.0] * len(p) for p in self.preds]
        if not self.bias:
            self.bias = [0.0] * len(self.preds)
        for i, p in enumerate(self.preds):
            if not p:
                raise ValueError(f"neuron {self.n_in + i} has no predecessor; every neuron needs one")
            if max(p) >= self.n_in + i:
                raise ValueError(f"neuron {self.n_in + i} reads {max(p)}; predecessors must come before it")
        self.succ_count = [0] * (self.n_in + len(self.preds))
        for p in self.preds:
            for u in p:
                self.succ_count[u] += 1

    @property
    def n_neurons(self) -> int:
        return len(self.preds)

    @property
    def n_connections(self) -> int:
        return sum(len(p) for p in self.preds)

    def outputs(self) -> list[int]:
        if self.output_ids is not None:
            return list(self.output_ids)
        return [self.n_in + i for i in range(self.n_neurons) if self.succ_count[self.n_in + i] == 0]

    def lower_bound(self) -> int:
        used_inputs = sum(1 for u in range(self.n_in) if self.succ_count[u])
        return used_inputs + self.n_connections + len(self.outputs())

    @classmethod
    def from_linears(cls, linears, masks=None) -> SparseFFN:
        """A pruned MLP (``nn.Linear`` layers, ReLU between) as a neuron DAG; zero weights are no connection."""
        n_in = linears[0].in_features
        preds, weights, bias = [], [], []
        offset, width = 0, n_in
        for index, layer in enumerate(linears):
            w = layer.weight.detach() if masks is None else layer.weight.detach() * masks[index]
            for row in range(w.shape[0]):
                cols = torch.nonzero(w[row]).flatten().tolist()
                if not cols:  # a dead neuron keeps one zero connection, so the DAG stays well formed
                    cols = [0]
                preds.append([offset + c for c in cols])
                weights.append([float(w[row, c]) for c in cols])
                bias.append(float(layer.bias.detach()[row]) if layer.bias is not None else 0.0)
            offset += width
            width = w.shape[0]
        last = len(preds) - width
        return cls(n_in, preds, weights, bias, output_ids=[n_in + last + i for i in range(width)])


def default_order(net: SparseFFN) -> list[int]:
    return list(range(net.n_in, net.n_in + net.n_neurons))


def check_order(net: SparseFFN, order: list[int]) -> None:
    if sorted(order) != default_order(net):
        raise ValueError("the order must list every neuron exactly once")
    done = set(range(net.n_in))
    for v in order:
        missing = [u for u in net.preds[v - net.n_in] if u not in done]
        if missing:
            raise ValueError(f"neuron {v} comes before its predecessor(s) {missing[:5]}; the order must be topological")
        done.add(v)


def simulate_io(net: SparseFFN, order: list[int] | None = None, memory: int = 64, policy: str = "belady") -> dict:
    """I/Os of evaluating ``net`` in ``order`` with ``memory`` words of fast memory (see the module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not supported; use one of {', '.join(POLICIES)}")
    if memory < 2:
        raise ValueError(f"memory={memory}: fast memory needs at least 2 words (a value and a partial sum)")
    order = default_order(net) if order is None else order
    sources = [u for v in order for u in sorted(net.preds[v - net.n_in])]  # one per connection, in time order
    uses: dict[int, list[int]] = {}
    for t, u in enumerate(sources):
        uses.setdefault(u, []).append(t)
    pointer = dict.fromkeys(uses, 0)
    never = len(sources) + 1

    def next_use(u):
        times = uses.get(u, ())
        i = pointer.get(u, 0)
        return times[i] if i < len(times) else never

    resident: dict[int, int] = {}  # value -> time of its last use (for LRU)
    dirty, in_slow = set(), set(range(net.n_in))
    counts = {"loads": 0, "weight_reads": len(sources), "output_writes": 0, "spill_writes": 0}

    def make_room(protect):
        while len(resident) >= memory:
            candidates = [u for u in resident if u not in protect]
            if policy == "belady":
                victim = max(candidates, key=lambda u: (next_use(u), u))
            else:
                victim = min(candidates, key=lambda u: (resident[u], u))
            del resident[victim]
            if victim in dirty:
                dirty.discard(victim)
                if next_use(victim) < never:  # still needed: write it back once
                    counts["spill_writes"] += 1
                    in_slow.add(victim)

    outputs, clock = set(net.outputs()), 0
    for v in order:
        make_room({v})
        resident[v] = clock  # the partial sum
        dirty.add(v)
        for u in sorted(net.preds[v - net.n_in]):
            if u not in resident:
                if u not in in_slow:
                    raise RuntimeError(f"value {u} was lost")  # a needed dirty value is always written first
                make_room({u, v})
                counts["loads"] += 1
            pointer[u] += 1
            clock += 1
            resident[u] = resident[v] = clock
            if next_use(u) == never and u != v and u not in dirty:
                del resident[u]  # dead and clean: its word is free at once
        if v in outputs:
            counts["output_writes"] += 1
            dirty.discard(v)
            in_slow.add(v)
            del resident[v]
    counts["total"] = counts["loads"] + counts["weight_reads"] + counts["output_writes"] + counts["spill_writes"]
    counts["lower_bound"] = net.lower_bound()
    return counts


def _movable_range(net: SparseFFN, order: list[int], index: int) -> tuple[int, int]:
    """Positions where ``order[index]`` may go: after its last predecessor, before its first successor."""
    v = order[index]
    where = {w: i for i, w in enumerate(order)}
    preds = [where[u] for u in net.preds[v - net.n_in] if u >= net.n_in]
    lo = max(preds) + 1 if preds else 0
    succ = [i for i in range(index + 1, len(order)) if v in net.preds[order[i] - net.n_in]]
    hi = min(succ) - 1 if succ else len(order) - 1
    return lo, hi


def anneal_order(net: SparseFFN, memory: int, steps: int = 2000, seed: int = 0, policy: str = "belady",
                 start: list[int] | None = None, temperature: float = 2.0, progress=None) -> tuple[list[int], dict]:
    """Simulated annealing over topological orders: move one neuron to a random legal position; accept by
    Metropolis with a temperature falling linearly to zero. Returns the best order and its I/O counts."""
    rng = random.Random(seed)
    order = list(start) if start is not None else default_order(net)
    cost = simulate_io(net, order, memory, policy)["total"]
    best, best_cost = list(order), cost
    for step in range(steps):
        index = rng.randrange(len(order))
        lo, hi = _movable_range(net, order, index)
        target = rng.randint(lo, hi)
        if target == index:
            continue
        candidate = list(order)
        candidate.insert(target, candidate.pop(index))
        new_cost = simulate_io(net, candidate, memory, policy)["total"]
        t = temperature * (1 - step / steps)
        if new_cost <= cost or (t > 0 and rng.random() < math.exp((cost - new_cost) / t)):
            order, cost = candidate, new_cost
            if cost < best_cost:
                best, best_cost = list(order), cost
        if progress is not None:
            progress(step + 1, steps, best_cost)
    return best, simulate_io(net, best, memory, policy)


def random_sparse_ffn(widths: list[int], density: float, seed: int = 0) -> SparseFFN:
    """A layered FFN with each connection between consecutive layers kept with probability ``density``."""
    rng = random.Random(seed)
    preds, offset = [], 0
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        for _ in range(b):
            p = [offset + u for u in range(a) if rng.random() < density] or [offset + rng.randrange(a)]
            preds.append(p)
        offset += a
    net = SparseFFN(widths[0], preds, [[rng.gauss(0, 1) for _ in p] for p in preds])
    return net


def io_efficient_network(n_in: int, n_neurons: int, n_out: int, connections: int, memory: int,
                         seed: int = 0) -> SparseFFN:
    """A network of the given sizes whose default order costs exactly the lower bound at fast memory ``memory``.

    Construction (derived here, as the paper's was not available): with ``W = memory - 2``, every input has one
    reader, outputs are spread along the order, and a hidden neuron is read only by the ``W`` neurons after it (at least one of them). When
    neuron ``v`` runs, the live values are then among the ``W`` neurons before it, plus its partial sum and the
    value being read: ``memory`` words. No value is evicted while needed, so nothing is loaded twice or written
    back: ``I/O = n_in + |E| + n_out``. Raises when ``connections`` is outside what the construction can place.
    """
    if not 1 <= n_out <= n_neurons or n_in < 1:
        raise ValueError("need n_in >= 1 and 1 <= n_out <= n_neurons")
    window = memory - 2
    if window < 1:
        raise ValueError(f"memory={memory}: the construction needs at least 3 words")
    rng = random.Random(seed)
    # outputs spread evenly, the last neuron always one; the rest are hidden
    is_out = [False] * n_neurons
    for k in range(n_out):
        is_out[n_neurons - 1 - k * n_neurons // n_out] = True
    hidden = [j for j in range(n_neurons) if not is_out[j]]
    preds: list[set[int]] = [set() for _ in range(n_neurons)]
    for k in range(n_in):  # input k read by one neuron, spread evenly (input 0 by neuron 0)
        preds[k * n_neurons // n_in].add(k)
    for j in hidden:  # each hidden neuron gets a reader within its window
        preds[rng.randint(j + 1, min(n_neurons - 1, j + window))].add(n_in + j)

    def window_sources(i):
        return [n_in + j for j in range(max(0, i - window), i) if not is_out[j]]

    for i in range(n_neurons):
        if not preds[i]:
            if not window_sources(i):
                raise ValueError(f"neuron {n_in + i} can read nothing: give more inputs or a larger memory")
            preds[i].add(rng.choice(window_sources(i)))
    free = [(u, i) for i in range(n_neurons) for u in window_sources(i) if u not in preds[i]]
    placed = sum(len(p) for p in preds)
    if not placed <= connections <= placed + len(free):
        raise ValueError(f"connections={connections}: this construction places between {placed} and "
                         f"{placed + len(free)} for these sizes and memory")
    for u, i in rng.sample(free, connections - placed):
        preds[i].add(u)
    ordered = [sorted(p) for p in preds]
    return SparseFFN(n_in, ordered, [[rng.gauss(0, 1) for _ in p] for p in ordered])


class BlockedExecutor:
    """Evaluates a :class:`SparseFFN` in ``order``, in blocks whose working set fits ``memory`` words per
    sample: consecutive neurons join a block while their sources were computed before it and the block's
    distinct sources plus its neurons stay within ``memory``. A block is one small dense product
    ``act(W_block @ values[sources] + b)``; hidden neurons use ReLU, outputs none.
    """

    def __init__(self, net: SparseFFN, order: list[int] | None = None, memory: int = 256):
        order = default_order(net) if order is None else list(order)
        check_order(net, order)
        self.net, self.memory = net, memory
        outputs = set(net.outputs())
        self.output_ids = sorted(outputs)
        self.blocks = []
        done, block, sources = set(range(net.n_in)), [], set()

        def close():
            if not block:
                return
            src = sorted(sources)
            col = {u: c for c, u in enumerate(src)}
            weight = torch.zeros(len(block), len(src))
            for r, v in enumerate(block):
                i = v - net.n_in
                for u, w in zip(net.preds[i], net.weights[i], strict=True):
                    weight[r, col[u]] += w
            bias = torch.tensor([net.bias[v - net.n_in] for v in block])
            relu = torch.tensor([v not in outputs for v in block])
            self.blocks.append((torch.tensor(block), torch.tensor(src), weight, bias, relu))
            done.update(block)

        for v in order:
            p = set(net.preds[v - net.n_in])
            fits = p <= done and len(sources | p) + len(block) + 1 <= memory
            if not fits:
                close()
                block, sources = [], set()
            block.append(v)
            sources |= p
        close()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[batch, n_in]`` to the outputs ``[batch, n_out]`` (in ascending id order)."""
        values = torch.zeros(self.net.n_in + self.net.n_neurons, x.shape[0], dtype=x.dtype)
        values[: self.net.n_in] = x.T
        for block, src, weight, bias, relu in self.blocks:
            out = torch.addmm(bias.to(x.dtype)[:, None], weight.to(x.dtype), values[src])
            values[block] = torch.where(relu[:, None], out.clamp_min(0), out)
        return values[self.output_ids].T
