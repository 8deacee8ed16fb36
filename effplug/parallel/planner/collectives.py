"""Alpha-beta costs of the collectives a training step uses (Thakur, Rabenseifner & Gropp 2005; Hockney's
model): a message of ``n`` bytes over a link costs ``alpha + n / beta`` seconds, ``alpha`` the latency and
``beta`` the bandwidth in bytes/s. Each function returns seconds for one call among ``ranks`` processes."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """What one rank can send to its neighbour in a ring: ``alpha`` seconds of latency, ``beta`` bytes/s."""

    alpha: float
    beta: float

    def __post_init__(self):
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < 0 or (name == "beta"
                                                                                             and value == 0):
                raise ValueError(f"Link {name}={value!r}: use a finite number, alpha >= 0 seconds, beta > 0 bytes/s")

    @classmethod
    def gbit(cls, gbit_per_s: float, latency_us: float = 2.0) -> Link:
        return cls(latency_us * 1e-6, gbit_per_s * 1e9 / 8)


def _check(ranks: int, nbytes: float) -> None:
    if not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks={ranks!r}: use a positive integer")
    if not (isinstance(nbytes, (int, float)) and math.isfinite(nbytes)) or nbytes < 0:
        raise ValueError(f"bytes={nbytes!r}: use a finite, non-negative size")


def ring_allreduce(ranks: int, nbytes: float, link: Link) -> float:
    """Reduce-scatter then all-gather around a ring: ``2(p−1)·α + 2(p−1)/p · n/β``."""
    _check(ranks, nbytes)
    p = ranks
    return 0.0 if p == 1 else 2 * (p - 1) * link.alpha + 2 * (p - 1) / p * nbytes / link.beta


def tree_allreduce(ranks: int, nbytes: float, link: Link) -> float:
    """Reduce up and broadcast down a binary tree, unpipelined: ``2⌈log₂p⌉·(α + n/β)``."""
    _check(ranks, nbytes)
    return 0.0 if ranks == 1 else 2 * math.ceil(math.log2(ranks)) * (link.alpha + nbytes / link.beta)


def reduce_scatter(ranks: int, nbytes: float, link: Link) -> float:
    """Ring reduce-scatter of ``n`` bytes (each rank ends with n/p): ``(p−1)·α + (p−1)/p · n/β``."""
    _check(ranks, nbytes)
    p = ranks
    return 0.0 if p == 1 else (p - 1) * link.alpha + (p - 1) / p * nbytes / link.beta


def all_gather(ranks: int, nbytes_per_rank: float, link: Link) -> float:
    """Ring all-gather of one ``n``-byte payload from every rank (what top-k sends): ``(p−1)·(α + n/β)``."""
    _check(ranks, nbytes_per_rank)
    return (ranks - 1) * (link.alpha + nbytes_per_rank / link.beta)


def p2p(nbytes: float, link: Link) -> float:
    """One point-to-point send, as between pipeline stages: ``α + n/β``."""
    _check(1, nbytes)
    return link.alpha + nbytes / link.beta


ALLREDUCE = {"ring": ring_allreduce, "tree": tree_allreduce}
