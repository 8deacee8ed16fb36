"""Magnitude pruning with a schedule, framework-free; the Lightning and HF doors are thin adapters over
:class:`Pruner`.

Patterns (the masks of one layer, its weight seen as ``[out, in]``):
- ``"unstructured"``: the smallest ``|w|`` of the layer are removed;
- ``"vector"``: V×1 column vectors (V consecutive output rows at one input column, Magicube's unit, so the
  result exports to :class:`~effplug.sparse.linear.SparseLinear` without padding), scored by their L2 norm;
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs of a row, the N largest are kept.

Schedules: ``"one-shot"`` prunes to ``sparsity`` at ``start_step``; ``"cubic"`` is the gradual schedule of
Zhu & Gupta (2017, eq. 1), ``s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(n Δt))³`` for ``t = t_0, t_0 + Δt, …,
t_0 + n Δt`` (``Δt = frequency``, ``t_0 + n Δt = end_step``). Weights pruned once stay pruned: the masks only
shrink, and are re-applied after every optimizer step, so momentum cannot revive them.

State (``state_dict``): the step of the last update and one bool mask per layer, keyed by module name.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from effplug.logs import log_once
from effplug.sparse.format import check_vector

log = logging.getLogger("effplug.sparse")
PATTERNS = ("unstructured", "vector", "N:M")
SCHEDULES = ("one-shot", "cubic")


def _n_of_m(pattern: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class PruningConfig:
    sparsity: float = 0.5
    pattern: str = "unstructured"
    vector: int = 4
    schedule: str = "one-shot"
    start_step: int = 0
    end_step: int | None = None
    frequency: int = 10
    initial_sparsity: float = 0.0
    exclude: tuple = ()
    keep_last: bool = True  # the output layer (the last prunable module) stays dense, as is usual

    def __post_init__(self):
        nm = _n_of_m(self.pattern)
        if self.pattern not in ("unstructured", "vector") and nm is None:
            raise ValueError(f"pattern={self.pattern!r} is not supported; use 'unstructured', 'vector' or 'N:M' "
                             "such as '2:4'")
        if nm is not None:
            if not 0 < nm[0] < nm[1]:
                raise ValueError(f"pattern={self.pattern!r}: N:M needs 0 < N < M")
            if self.schedule != "one-shot":
                raise ValueError(f"pattern={self.pattern!r} fixes the sparsity at 1 - N/M; use schedule='one-shot'")
        if self.pattern == "vector":
            check_vector(self.vector)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not supported; use one of {', '.join(SCHEDULES)}")
        for name in ("sparsity", "initial_sparsity"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.schedule == "cubic":
            if self.end_step is None or self.end_step <= self.start_step:
                raise ValueError(f"schedule='cubic' needs end_step > start_step={self.start_step}; "
                                 f"got end_step={self.end_step!r}")
            if self.frequency < 1:
                raise ValueError(f"frequency={self.frequency!r} must be a positive number of steps")
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))

    @property
    def n_of_m(self) -> tuple[int, int] | None:
        return _n_of_m(self.pattern)

    def target_sparsity(self, step: int) -> float | None:
        """The sparsity the schedule asks for at ``step``, or None when no update is due then."""
        if self.n_of_m is not None:
            n, m = self.n_of_m
            return 1.0 - n / m if step >= self.start_step else None
        if self.schedule == "one-shot":
            return self.sparsity if step >= self.start_step else None
        if step < self.start_step or step > self.end_step:
            return None
        if step < self.end_step and (step - self.start_step) % self.frequency:
            return None
        progress = min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        return self.sparsity + (self.initial_sparsity - self.sparsity) * (1.0 - progress) ** 3


def is_hf_conv1d(module: nn.Module) -> bool:
    """HF's ``Conv1D`` (GPT-2), or a subclass of it such as QAT's ``QuantConv1D``."""
    return any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)


def out_in_view(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[out, in]``: HF's GPT-2 ``Conv1D`` stores ``[in, out]``; convolutions flatten their kernel."""
    if is_hf_conv1d(module):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def _keep_smallest_out(score: torch.Tensor, sparsity: float, already: torch.Tensor) -> torch.Tensor:
    """Drop the ``round(sparsity · n)`` lowest scores (already-pruned entries first); stable on ties."""
    flat = torch.where(already.reshape(-1), score.reshape(-1).float(), torch.full((), -1.0))
    drop = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if drop:
        keep[torch.argsort(flat, stable=True)[:drop]] = False
    return keep.view_as(score)


def magnitude_mask(weight2d: torch.Tensor, sparsity: float, pattern: str, vector: int = 4,
                   previous: torch.Tensor | None = None) -> torch.Tensor:
    """The keep-mask of ``weight2d`` ``[out, in]`` at ``sparsity`` for ``pattern`` (see the module docstring)."""
    w = weight2d.detach().abs().float()
    previous = torch.ones_like(w, dtype=torch.bool) if previous is None else previous
    nm = _n_of_m(pattern)
    if nm is not None:
        n, m = nm
        groups = w.reshape(w.shape[0], -1, m)
        top = groups.topk(n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return keep.reshape_as(w)
    if pattern == "unstructured":
        return _keep_smallest_out(w, sparsity, previous)
    rows, cols = w.shape
    padded = -(-rows // vector) * vector
    wp = torch.zeros(padded, cols, device=w.device)
    wp[:rows] = w
    pp = torch.zeros(padded, cols, dtype=torch.bool, device=w.device)
    pp[:rows] = previous
    score = wp.view(padded // vector, vector, cols).norm(dim=1)
    alive = pp.view(padded // vector, vector, cols).any(dim=1)
    keep = _keep_smallest_out(score, sparsity, alive)
    return keep.repeat_interleave(vector, dim=0)[:rows]


class Pruner:
    """Owns the masks of ``model``'s prunable layers (``nn.Linear``, convolutions, HF ``Conv1D``).

    ``update(step)`` recomputes the masks when the schedule says so; ``apply()`` zeroes the pruned weights
    (call it after every optimizer step). Layers left dense are reported once at WARNING.
    """

    def __init__(self, model: nn.Module, config: PruningConfig | None = None):
        self.config = config or PruningConfig()
        self.model = model
        self.layers: dict[str, nn.Module] = {}
        self.skipped: dict[str, str] = {}
        self._said: set = set()
        self._select_layers()
        self.masks: dict[str, torch.Tensor] = {}
        self.last_update: int = -1

    def _select_layers(self) -> None:
        cfg = self.config
        candidates = [(name, m) for name, m in self.model.named_modules()
                      if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_hf_conv1d(m)]
        if not candidates:
            raise ValueError("Pruning found no nn.Linear, convolution or Conv1D layer in the model; nothing to prune")
        owners: dict[int, list[str]] = {}
        for name, module in self.model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
        last = candidates[-1][0] if cfg.keep_last else None
        nm = cfg.n_of_m
        for name, module in candidates:
            weight = module.weight
            if name == last:
                self.skipped[name] = "the output layer (keep_last=True)"
            elif any(fnmatch.fnmatch(name, pattern) for pattern in cfg.exclude):
                self.skipped[name] = "excluded"
            elif len(owners.get(id(weight), [])) > 1:
                self.skipped[name] = f"its weight is shared with {owners[id(weight)]} (tied); pruning would change both"
            elif nm is not None and out_in_view(module, weight).shape[1] % nm[1]:
                self.skipped[name] = f"its {out_in_view(module, weight).shape[1]} inputs are not a multiple of M={nm[1]}"
            else:
                self.layers[name] = module
        for name, why in self.skipped.items():
            log_once(log, f"skip:{name}", "effplug Pruning leaves %s dense: %s", name, why, seen=self._said)
        if not self.layers:
            raise ValueError(f"Pruning would prune no layer: {self.skipped}")

    def update(self, step: int) -> bool:
        """Recompute the masks if the schedule has an update at ``step``; returns whether it did."""
        target = self.config.target_sparsity(step)
        if target is None or step <= self.last_update:
            return False
        if self.config.schedule == "one-shot" and self.last_update >= 0:
            return False  # pruned once, at the first step on or after start_step
        for name, module in self.layers.items():
            weight2d = out_in_view(module, module.weight)
            if not torch.isfinite(weight2d).all():
                log_once(log, f"nonfinite:{name}", "effplug Pruning keeps the previous mask of %s: its weight has "
                         "non-finite values at step %d", name, step, seen=self._said)
                continue
            previous = self.masks.get(name)
            mask2d = magnitude_mask(weight2d, target, self.config.pattern, self.config.vector,
                                    None if previous is None else out_in_view(module, previous))
            mask = mask2d.T if is_hf_conv1d(module) else mask2d.reshape(module.weight.shape)
            self.masks[name] = mask.contiguous()
        self.last_update = step
        self.apply()
        return True

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            weight = self.layers[name].weight
            weight.mul_(mask.to(weight.device, weight.dtype))

    def sparsity(self) -> float:
        """The share of pruned weights over the prunable layers (0 before the first update)."""
        total = sum(m.weight.numel() for m in self.layers.values())
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        return pruned / max(1, total)

    def layer_sparsity(self) -> dict[str, float]:
        return {name: float((~mask).float().mean()) for name, mask in self.masks.items()}

    def state_dict(self) -> dict:
        return {"last_update": int(self.last_update), "masks": {k: v.detach().cpu().clone() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        masks = state.get("masks", {})
        unknown = sorted(set(masks) - set(self.layers))
        if unknown:
            raise ValueError(f"the pruning checkpoint has masks for {unknown}, which this model does not prune "
                             f"(it prunes {sorted(self.layers)}); resume with the run's model and PruningConfig")
        for name, mask in masks.items():
            if mask.shape != self.layers[name].weight.shape:
                raise ValueError(f"the pruning checkpoint's mask of {name} is {tuple(mask.shape)}; the weight is "
                                 f"{tuple(self.layers[name].weight.shape)}")
        self.masks = {k: v.to(torch.bool).to(self.layers[k].weight.device) for k, v in masks.items()}
        self.last_update = int(state.get("last_update", -1))
        self.apply()


def export_sparse(model: nn.Module, pruner: Pruner, vector: int = 4, bits: int = 8, dense_bits: int = 8) -> dict:
    """Replace each pruned ``nn.Linear`` (QAT's ``QuantLinear`` included) and HF ``Conv1D`` of ``model`` by a
    :class:`SparseLinear` holding its mask, in place; returns ``{name: SparseLinear}``. Convolutions stay."""
    from effplug.sparse.linear import SparseLinear

    replaced = {}
    for name, module in pruner.layers.items():
        if name not in pruner.masks:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.MultiheadAttention):
            log_once(log, f"export:{name}", "effplug export_sparse keeps %s dense: nn.MultiheadAttention reads its "
                     "out_proj.weight directly", name, seen=pruner._said)
            continue
        if isinstance(module, nn.Linear):
            linear = module
        elif is_hf_conv1d(module):
            linear = nn.Linear(module.weight.shape[0], module.weight.shape[1]).to(module.weight.device)
            linear.weight.data, linear.bias.data = module.weight.data.T.clone(), module.bias.data.clone()
        else:
            log_once(log, f"export:{name}", "effplug export_sparse keeps %s (%s) dense: SparseLinear replaces "
                     "linear layers only", name, type(module).__name__, seen=pruner._said)
            continue
        mask = out_in_view(module, pruner.masks[name])
        sparse = SparseLinear.from_linear(linear, mask, vector=vector, bits=bits, dense_bits=dense_bits)
        setattr(parent, child, sparse)
        replaced[name] = sparse
    return replaced
