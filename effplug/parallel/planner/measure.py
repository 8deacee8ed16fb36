"""The measured link: time ``all_reduce`` among ``world`` local gloo processes (loopback on this machine) over a
range of sizes and fit the ring model ``t(n) = 2(p−1)·α + 2(p−1)/p · n/β`` by least squares. NCCL is not
measured: no GPU was lent to this work."""

from __future__ import annotations

import time

import torch

from effplug.parallel.planner.collectives import Link

SIZES = (2**12, 2**16, 2**20, 2**22, 2**24)  # bytes


def _time_allreduce(rank: int, world: int, sizes, repeats: int, device: str) -> list[float]:
    import torch.distributed as dist

    out = []
    for nbytes in sizes:
        x = torch.ones(nbytes // 4, device=device)
        dist.all_reduce(x)  # warm-up: connections, buffers
        times = []
        for _ in range(repeats):
            dist.barrier()
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            dist.all_reduce(x)
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out.append(sorted(times)[len(times) // 2])
    return out


def fit_ring(world: int, sizes, seconds) -> Link:
    """α and β of the ring model from measured (size, seconds) pairs."""
    n = torch.tensor(sizes, dtype=torch.float64)
    t = torch.tensor(seconds, dtype=torch.float64)
    design = torch.stack([torch.ones_like(n), n], 1) / t[:, None]  # relative errors: small sizes fix alpha
    intercept, slope = torch.linalg.lstsq(design, torch.ones_like(t)[:, None]).solution.flatten().tolist()
    p = world
    alpha = max(intercept, 0.0) / (2 * (p - 1))
    beta = 2 * (p - 1) / p / max(slope, 1e-30)
    return Link(alpha, beta)


def measure_link(world: int = 2, sizes=SIZES, repeats: int = 5) -> tuple[Link, list[float]]:
    """(fitted link, median seconds per size) of all-reduce among ``world`` spawned local processes."""
    from effplug.launch import spawn_ranks

    if world < 2:
        raise ValueError(f"world={world}: measuring a link needs at least 2 processes")
    results = spawn_ranks(_time_allreduce, world, tuple(sizes), repeats, "cpu", timeout_s=300)
    seconds = [max(r[i] for r in results.values()) for i in range(len(sizes))]
    return fit_ring(world, sizes, seconds), seconds
