"""The planner's tables: ranked layouts, and what each topology's network costs for the same GPUs."""

from __future__ import annotations

from effplug.parallel.planner.layouts import LayoutCost, Workload
from effplug.parallel.planner.topologies import FatTree, HammingMesh, Topology, Torus


def format_layouts(rows: list[LayoutCost], work: Workload, topology: Topology, top: int = 10) -> str:
    link = topology.link
    lines = [f"{work.params:,.0f} parameters, global batch {work.global_batch} x {work.seq_len} tokens, "
             f"{topology.gpus} GPUs ({work.gpu_mem_gb:g} GiB, {work.peak_tflops:g} TFLOP/s at {work.mfu:.0%} MFU) "
             f"on {topology.name}: {link.beta * 8 / 1e9:g} Gbit/s and {link.alpha * 1e6:g} us per port. "
             "A model, not a measurement (docs/plan.md).", "",
             "| rank | layout | micro-batches | per-rank GiB | fits | compute ms | bubble | pipeline ms | "
             "tensor ms | gradients ms | projected step ms | comm share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows[:top], start=1):
        comm = r.comm_s / r.step_s
        lines.append(f"| {i} | {r.label} | {r.microbatches} | {r.memory_gib:.1f} | {'yes' if r.fits else 'no'} | "
                     f"{r.compute_s * 1e3:.1f} | {r.bubble:.1%} | {r.pipeline_s * 1e3:.1f} | "
                     f"{r.tensor_s * 1e3:.1f} | {r.gradient_s * 1e3:.1f} | {r.step_s * 1e3:.1f} | {comm:.0%} |")
    fitting = [r for r in rows if r.fits]
    if fitting:
        best = fitting[0]
        lines.append(f"\nfastest layout that fits: {best.label} ({best.step_s * 1e3:.1f} ms/step, "
                     f"{best.memory_gib:.1f} GiB per rank)")
    else:
        smallest = min(rows, key=lambda r: r.memory_gib)
        lines.append(f"\nnothing fits in {work.headroom:.0%} of {work.gpu_mem_gb:g} GiB: the smallest layout, "
                     f"{smallest.label}, needs {smallest.memory_gib:.1f} GiB per rank. Add GPUs, or reduce the "
                     "micro-batch or sequence length")
    return "\n".join(lines)


def network_costs(gpus: int, link) -> list[tuple[str, object]]:
    """Each topology family's network for ``gpus`` accelerators, where the count allows it."""
    out = [("fat tree 1:1", FatTree(gpus, link)), ("fat tree 2:1", FatTree(gpus, link, 2.0))]
    side = round(gpus ** 0.5)
    if side * side == gpus:
        out.append((f"torus {side}x{side}", Torus(gpus, link, (side, side))))
    for a in (2, 4):
        if gpus % (a * a) == 0:
            topology = HammingMesh(gpus, link, (a, a))
            out.append((topology.name, topology))
    return [(name, t.cost()) for name, t in out]


def format_costs(gpus: int, link) -> str:
    lines = ["| network | switches | switch ports | cables | on-board links |", "|---|---|---|---|---|"]
    for name, cost in network_costs(gpus, link):
        lines.append(f"| {name} | {cost.switches:,} | {cost.switch_ports:,} | {cost.cables:,} | {cost.board_links:,} |")
    return "\n".join(lines)
