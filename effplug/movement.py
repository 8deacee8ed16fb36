"""A data-movement report for any model, after DaCeML (Rausch et al., ICS'22) and Ivanov et al. ("Data movement
is all you need", MLSys'21): the bytes every aten op reads and writes, its FLOPs, per op type and per module,
the arithmetic intensity, and the share of bytes that elementwise and normalization ops move.

``report = data_movement(lambda: model(x).sum().backward(), model)`` runs ``fn`` under a ``TorchDispatchMode``.

Counting rules, the same for every op:
- an op reads each tensor argument's own extent (``numel · element_size``, not its whole storage) and writes
  each tensor it returns; an in-place op writes the tensor it mutates;
- views (``t``, ``view``, ``expand``, ``_unsafe_view``, ...) and allocations (``empty_like``) move nothing;
- FLOPs come from torch's own counter formulas (``torch.utils.flop_counter``: matmul, convolution, attention);
  other ops count 0 FLOPs, as the papers do for data-movement-bound ops;
- forward ops belong to the innermost module running (forward hooks); backward ops to the leaf module whose
  backward hooks bracket them; the rest (the loss, a first layer whose input needs no gradient) to
  ``<outside modules>``.
- an effplug fused op (``effplug.kernels.regions.fused_op``) counts once, as ``effplug.<op>``: it reads its
  inputs and writes its outputs, as its one GPU kernel does, whatever chain its CPU reference runs.
This is an upper bound on DRAM traffic: a cache may serve a repeated read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CONTRACTIONS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "convolution", "convolution_backward",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_attention_math", "_flash_attention_forward", "_efficient_attention_forward"}
NORMALIZATIONS = {"native_layer_norm", "native_layer_norm_backward", "native_batch_norm", "_native_batch_norm_legit",
                  "native_batch_norm_backward", "native_group_norm", "native_group_norm_backward", "_fused_rms_norm",
                  "_softmax", "_softmax_backward_data", "_log_softmax", "_log_softmax_backward_data"}
# ops that move no data: aliases and views the schema does not mark, and allocations of uninitialized memory
FREE_OPS = {"detach", "alias", "lift_fresh", "_unsafe_view", "empty", "empty_like", "empty_strided", "new_empty",
            "new_empty_strided"}
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var_mean", "std_mean", "norm", "linalg_vector_norm"}


def op_kind(func) -> str:
    """contraction, normalization, elementwise, reduction or other (copies, indexing, embedding)."""
    name = func.overloadpacket.__name__
    if name in CONTRACTIONS:
        return "contraction"
    if name in NORMALIZATIONS:
        return "normalization"
    if torch.Tag.pointwise in func.tags or name in ("native_dropout", "native_dropout_backward",
                                                   "threshold_backward", "gelu_backward", "silu_backward"):
        return "elementwise"
    if name in REDUCTIONS:
        return "reduction"
    return "other"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() if t.layout == torch.strided else 0


@dataclass
class Movement:
    calls: int = 0
    read: int = 0
    written: int = 0
    flops: int = 0

    @property
    def bytes(self) -> int:
        return self.read + self.written

    def add(self, read: int, written: int, flops: int) -> None:
        self.calls += 1
        self.read, self.written, self.flops = self.read + read, self.written + written, self.flops + flops


@dataclass
class DataMovementReport:
    per_op: dict[str, Movement] = field(default_factory=lambda: defaultdict(Movement))
    per_kind: dict[str, Movement] = field(default_factory=lambda: defaultdict(Movement))
    per_module: dict[str, Movement] = field(default_factory=lambda: defaultdict(Movement))
    total: Movement = field(default_factory=Movement)

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.total.flops / self.total.bytes if self.total.bytes else 0.0

    @property
    def elementwise_and_normalization_share(self) -> float:
        """The share of bytes moved by elementwise and normalization ops, the papers' headline figure."""
        moved = sum(self.per_kind[k].bytes for k in ("elementwise", "normalization") if k in self.per_kind)
        return moved / self.total.bytes if self.total.bytes else 0.0

    def table(self, by: str = "kind", top: int = 12) -> str:
        rows = {"kind": self.per_kind, "op": self.per_op, "module": self.per_module}[by]
        lines = [f"| {by} | calls | MB read | MB written | share of bytes | GFLOP | FLOP/byte |",
                 "|---|---|---|---|---|---|---|"]
        for name, m in sorted(rows.items(), key=lambda kv: -kv[1].bytes)[:top]:
            lines.append(f"| {name} | {m.calls} | {m.read / 2**20:.2f} | {m.written / 2**20:.2f} | "
                         f"{m.bytes / max(self.total.bytes, 1):.1%} | {m.flops / 1e9:.3f} | "
                         f"{m.flops / m.bytes if m.bytes else 0:.2f} |")
        lines.append(f"\ntotal {self.total.bytes / 2**20:.2f} MB moved, {self.total.flops / 1e9:.3f} GFLOP, "
                     f"{self.arithmetic_intensity:.2f} FLOP/byte; elementwise + normalization move "
                     f"{self.elementwise_and_normalization_share:.1%} of the bytes")
        return "\n".join(lines)


class _Counter(TorchDispatchMode):
    def __init__(self, report: DataMovementReport, where: Callable[[], str]):
        super().__init__()
        self.report, self.where = report, where
        self.suppressed = 0  # > 0 inside an effplug fused op, which is counted once, as its kernel
        self._stop_listening = None

    def __enter__(self):
        from effplug.kernels.regions import listening

        self._stop_listening = listening(self)
        return super().__enter__()

    def __exit__(self, *exc):
        self._stop_listening()
        return super().__exit__(*exc)

    def count_fused(self, name: str, kind: str, inputs: list, outputs: list) -> None:
        read, written = sum(_nbytes(t) for t in inputs), sum(_nbytes(t) for t in outputs)
        self._add(f"effplug.{name}", kind, read, written, 0)

    def _add(self, name, kind, read, written, flops) -> None:
        for bucket in (self.report.per_op[name], self.report.per_kind[kind], self.report.per_module[self.where()],
                       self.report.total):
            bucket.add(read, written, flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppressed or func.is_view or func.overloadpacket.__name__ in FREE_OPS:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        read = sum(_nbytes(t) for t in inputs)
        written = sum(_nbytes(t) for t in outputs)
        if func._schema.is_mutable and not outputs:
            written = sum(_nbytes(t) for t in inputs[:1])
        counter = flop_registry.get(func.overloadpacket)
        flops = 0
        if counter is not None:
            try:
                flops = int(counter(*args, **kwargs, out_val=out))
            except Exception:  # a counter's signature that does not fit this overload: no FLOPs, as documented
                flops = 0
        self._add(func.overloadpacket.__name__, op_kind(func), read, written, flops)
        return out


def data_movement(fn: Callable[[], object], model: torch.nn.Module | None = None) -> DataMovementReport:
    """Run ``fn`` (a forward, or forward and backward) and count what every aten op moves; ``model``'s
    modules name the rows of ``per_module``."""
    report = DataMovementReport()
    stack: list[str] = []
    handles = []

    def enter(label):
        def hook(*_):
            stack.append(label)  # returns None: a hook's return value would replace the module's tensors
        return hook

    def leave(*_):
        if stack:
            stack.pop()

    if model is not None:
        for name, module in model.named_modules():
            label = name or type(module).__name__
            handles += [module.register_forward_pre_hook(enter(label)), module.register_forward_hook(leave)]
            if not list(module.children()):  # leaf modules: their backward runs between these two hooks
                handles += [module.register_full_backward_pre_hook(enter(f"{label} (backward)")),
                            module.register_full_backward_hook(leave)]
    try:
        with _Counter(report, lambda: stack[-1] if stack else "<outside modules>"):
            fn()
    finally:
        for handle in handles:
            handle.remove()
    report.per_op, report.per_kind, report.per_module = dict(report.per_op), dict(report.per_kind), \
        dict(report.per_module)
    return report
