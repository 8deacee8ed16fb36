"""Start a few local ranks for tests, benchmarks and recipes: a rendezvous port that cannot collide, the
torchrun-style environment, and a launcher that runs one command per rank."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free TCP port *below* the OS's ephemeral range.

    ``bind(0)`` hands out an ephemeral port, and between closing it and the rendezvous server binding it the
    OS may give the same port to another process's outgoing connection (gloo opens many): the ranks then
    wait forever. Ports outside that range are never handed out implicitly.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low))
    random.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def rank_env(rank: int, world: int, port: int, **extra: str) -> dict:
    """The environment torchrun would give ``rank`` (Lightning, HF and DeepSpeed all read it)."""
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "NODE_RANK": "0", "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1", **extra}


def launch_ranks(args: list[str], world: int = 2, timeout: float = 900, **extra_env: str) -> list[str]:
    """Run ``python *args`` once per rank; returns each rank's output, raising with it if any rank failed."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *args], env=rank_env(rank, world, port, **extra_env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(world)]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        if proc.returncode != 0:
            raise RuntimeError(f"rank {rank} of {world} failed (exit {proc.returncode}):\n{log[-4000:]}")
    return logs


def _spawned_rank(rank, fn, world, port, results, args, timeout_s):
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        results[rank] = fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_ranks(fn, world: int = 2, *args, timeout_s: float = 120) -> dict:
    """``fn(rank, world, *args)`` in ``world`` spawned processes joined in one gloo group (on a port from
    :func:`free_port`); returns ``{rank: what fn returned}``. ``fn`` must be a module-level function."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_spawned_rank, args=(fn, world, free_port(), results, args, timeout_s), nprocs=world, join=True)
    return dict(results)
