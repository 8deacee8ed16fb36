"""Network topologies for the planner, each reduced to what a layout sees: the link of its data-parallel ring
and of its pipeline ring, and what the network costs in switches, switch ports and cables.

Models, not simulations. Every link is the alpha-beta :class:`~effplug.parallel.planner.collectives.Link` of
one port. The placement puts data parallelism (DP) on the topology's first dimension and the pipeline (PP) on
its second.

- :class:`FatTree`: one NIC per accelerator into a folded Clos of ``radix``-port switches. Any ring gets the
  NIC's bandwidth, divided by ``oversubscription`` once the ring leaves a leaf switch.
- :class:`Torus`: 2-D or 3-D, one port per direction, no switches. A ring that fills a whole dimension runs
  both directions (2x a port); a partial dimension is a line (1x); a ring across dimensions shares links (1x).
- :class:`HammingMesh` (Hoefler et al., SC'22, arXiv 2209.01346): boards of ``a x b`` accelerators wired as a
  2-D mesh on the board. Each board's east/west edge ports join a row network and its north/south edge ports a
  column network, both fat trees linking the boards in that row or column. A row of ``a·x`` accelerators is
  one ring dimension and a column of ``b·y`` is the other. A job whose DP fits a row and whose PP fits a column
  gets the full bidirectional bandwidth on both, which is the paper's point. A dimension that spans both rows
  and columns shares the other's ports (1x).
- :class:`Measured`: one measured link for everything, such as gloo on loopback here or NCCL on a GPU node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from effplug.parallel.planner.collectives import Link


@dataclass(frozen=True)
class NetworkCost:
    switches: int
    switch_ports: int
    cables: int  # NIC-to-switch, switch-to-switch and accelerator-to-accelerator cables
    board_links: int = 0  # on-board mesh traces (HammingMesh), not cables

    def __add__(self, other: NetworkCost) -> NetworkCost:
        return NetworkCost(self.switches + other.switches, self.switch_ports + other.switch_ports,
                           self.cables + other.cables, self.board_links + other.board_links)


def fat_tree_cost(endpoints: int, radix: int = 64, oversubscription: float = 1.0) -> NetworkCost:
    """A folded Clos of ``radix``-port switches over ``endpoints`` ports, with the fewest levels L such that
    ``2 (radix/2)^L >= endpoints``. Every level but the top gives half its ports down and half up (the leaves
    ``1/oversubscription`` of that up); the top switches give all their ports down."""
    if endpoints <= 0:
        return NetworkCost(0, 0, 0)
    if endpoints <= radix:
        return NetworkCost(1, endpoints, endpoints)
    half = radix // 2
    levels = 2
    while 2 * half**levels < endpoints:
        levels += 1
    switches, ports, cables = math.ceil(endpoints / half), endpoints, endpoints  # leaves: down ports, NIC cables
    remaining = math.ceil(endpoints / oversubscription)  # links up from the leaves
    ports += remaining
    for _ in range(levels - 2):  # middle levels: ``remaining`` ports down and as many up
        switches += math.ceil(remaining / half)
        ports += 2 * remaining
        cables += remaining
    switches += math.ceil(remaining / radix)  # the top level
    ports += remaining
    cables += remaining
    return NetworkCost(switches, ports, cables)


class Topology:
    name = ""

    def __init__(self, gpus: int, link: Link):
        if not isinstance(gpus, int) or gpus < 1:
            raise ValueError(f"gpus={gpus!r}: use a positive integer")
        self.gpus, self.link = gpus, link

    def links(self, dp: int, pp: int) -> tuple[Link, Link]:
        """The links of the DP ring and of the PP ring for a ``dp x pp`` layout."""
        raise NotImplementedError

    def cost(self) -> NetworkCost:
        raise NotImplementedError

    def _scaled(self, factor: float) -> Link:
        return Link(self.link.alpha, self.link.beta * factor)


class FatTree(Topology):
    def __init__(self, gpus: int, link: Link, oversubscription: float = 1.0, radix: int = 64):
        super().__init__(gpus, link)
        if not oversubscription >= 1:
            raise ValueError(f"oversubscription={oversubscription!r}: use 1 (full bisection) or more (tapered)")
        self.oversubscription, self.radix = oversubscription, radix
        self.name = "fat tree" + (f" {oversubscription:g}:1" if oversubscription > 1 else "")

    def links(self, dp, pp):
        leaf = self.gpus if self.gpus <= self.radix else self.radix // 2  # one switch: nothing to taper
        dp_link = self.link if dp <= leaf else self._scaled(1 / self.oversubscription)
        pp_link = self.link if dp * pp <= leaf else self._scaled(1 / self.oversubscription)
        return dp_link, pp_link

    def cost(self):
        return fat_tree_cost(self.gpus, self.radix, self.oversubscription)


def _grid(text: str, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise ValueError(f"{what} {text!r}: give sizes like 8x8 or 4x4x4")
    return dims


class Torus(Topology):
    def __init__(self, gpus: int, link: Link, dims: tuple[int, ...]):
        super().__init__(gpus, link)
        if len(dims) not in (2, 3) or math.prod(dims) != gpus:
            raise ValueError(f"torus {'x'.join(map(str, dims))} has {math.prod(dims)} nodes, not --gpus {gpus}; "
                             "give 2 or 3 sizes whose product is the GPU count")
        self.dims = dims
        self.name = "torus " + "x".join(map(str, dims))

    def links(self, dp, pp):
        def factor(size: int, dims: tuple[int, ...]) -> float:
            # a whole ring dimension runs both directions; a line segment or several dimensions do not
            return 2.0 if size == 1 or not dims or size == dims[0] else 1.0

        first = factor(dp, self.dims)
        used = 1 if dp <= self.dims[0] else 2
        second = factor(pp, self.dims[used:]) if pp <= math.prod(self.dims[used:]) else 1.0
        return self._scaled(first), self._scaled(second)

    def cost(self):
        return NetworkCost(0, 0, self.gpus * len(self.dims))


class HammingMesh(Topology):
    def __init__(self, gpus: int, link: Link, board: tuple[int, int], grid: tuple[int, int] | None = None,
                 radix: int = 64):
        super().__init__(gpus, link)
        a, b = board
        if gpus % (a * b):
            raise ValueError(f"--gpus {gpus} is not a whole number of {a}x{b} boards")
        boards = gpus // (a * b)
        if grid is None:  # the squarest board grid
            x = max(d for d in range(1, math.isqrt(boards) + 1) if boards % d == 0)
            grid = (boards // x, x)
        if grid[0] * grid[1] != boards:
            raise ValueError(f"a {grid[0]}x{grid[1]} grid of {a}x{b} boards is {grid[0] * grid[1] * a * b} "
                             f"accelerators, not --gpus {gpus}")
        self.board, self.grid, self.radix = (a, b), grid, radix
        self.name = f"HammingMesh {a}x{b} boards, {grid[0]}x{grid[1]} grid"

    @property
    def row(self) -> int:
        return self.board[0] * self.grid[0]

    @property
    def column(self) -> int:
        return self.board[1] * self.grid[1]

    def links(self, dp, pp):
        in_row = dp <= self.row and self.row % dp == 0
        in_column = pp <= self.column and self.column % pp == 0
        return self._scaled(2.0 if in_row else 1.0), self._scaled(2.0 if in_column and in_row else 1.0)

    def cost(self):
        (a, b), (x, y) = self.board, self.grid
        boards = x * y
        traces = boards * (a * (b - 1) + b * (a - 1))
        total = NetworkCost(0, 0, 0, traces)
        for _ in range(y * b):  # one row network per accelerator row: west and east ports of x boards
            total = total + fat_tree_cost(2 * x, self.radix)
        for _ in range(x * a):  # one column network per accelerator column
            total = total + fat_tree_cost(2 * y, self.radix)
        return total


class Measured(Topology):
    def __init__(self, gpus: int, link: Link, label: str = "measured"):
        super().__init__(gpus, link)
        self.name = label

    def links(self, dp, pp):
        return self.link, self.link

    def cost(self):
        return NetworkCost(0, 0, 0)


def parse_topology(spec: str, gpus: int, link: Link) -> Topology:
    """``fattree``, ``fattree:2`` (2:1 tapered), ``torus:8x8``, ``torus:4x4x4``, ``hammingmesh:4x4`` (boards,
    squarest grid) or ``hammingmesh:4x4:2x2`` (boards and grid)."""
    kind, _, rest = spec.partition(":")
    kind = kind.lower().replace("-", "").replace("_", "")
    if kind == "fattree":
        try:
            taper = float(rest) if rest else 1.0
        except ValueError:
            raise ValueError(f"--topology {spec!r}: the fat tree's oversubscription is a number, e.g. fattree:2") \
                from None
        return FatTree(gpus, link, taper)
    if kind == "torus":
        return Torus(gpus, link, _grid(rest, "torus"))
    if kind == "hammingmesh":
        board, _, grid = rest.partition(":")
        dims = _grid(board or "4x4", "HammingMesh board")
        if len(dims) != 2:
            raise ValueError(f"HammingMesh board {board!r}: give a x b, e.g. 4x4")
        grid_dims = _grid(grid, "HammingMesh grid") if grid else None
        if grid_dims is not None and len(grid_dims) != 2:
            raise ValueError(f"HammingMesh grid {grid!r}: give x x y, e.g. 2x2")
        return HammingMesh(gpus, link, dims, grid_dims)
    raise ValueError(f"--topology {spec!r}: choose fattree[:oversubscription], torus:AxB[xC], "
                     "hammingmesh:AxB[:XxY] or local (measured gloo here)")
