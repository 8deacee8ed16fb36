"""One summary line per conversion: layers converted, layers left in float and why, the parameter share covered.

Every technique that swaps layers (QAT, LUQ, LNS, binarization) reports through :func:`report_coverage`.
A layer with a weight matrix that the technique could not convert (an unsupported type, an attention block
it does not handle) is a WARNING; layers left in float by a setting (first/last, ``exclude``, embeddings)
are listed at INFO in the same line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

log = logging.getLogger("effplug.quant")


@dataclass
class CoverageReport:
    technique: str
    converted: list[str]
    left_float: dict[str, str] = field(default_factory=dict)  # module name -> reason
    unsupported: dict[str, str] = field(default_factory=dict)  # module name -> its type
    covered_parameters: int = 0
    weight_parameters: int = 0

    @property
    def share(self) -> float:
        """Fraction of the weight-matrix parameters (2-D and up, named ``*weight``, any module) converted."""
        return self.covered_parameters / self.weight_parameters if self.weight_parameters else 0.0

    def line(self) -> str:
        parts = [f"effplug.quant {self.technique}: {len(self.converted)} layers converted, "
                 f"{100 * self.share:.1f}% of weight-matrix parameters"]
        if self.unsupported:
            parts.append("NOT converted (unsupported): " + ", ".join(f"{n} ({t})" for n, t in self.unsupported.items()))
        if self.left_float:
            parts.append("left in float: " + ", ".join(f"{n} ({r})" for n, r in self.left_float.items()))
        return "; ".join(parts)


def report_coverage(model: nn.Module, technique: str, converted: list[str], left_float: dict[str, str]) -> CoverageReport:
    """Log the conversion summary once (WARNING when an unsupported layer holds a weight matrix)."""
    report = CoverageReport(technique, list(converted), dict(left_float))
    converted_set = set(converted)
    for name, module in model.named_modules():
        # weight matrices: 2-D and up, named *weight (not ViT's cls_token or position table)
        own = [p for n, p in module.named_parameters(recurse=False) if p.dim() >= 2 and n.endswith("weight")]
        if not own:
            continue
        numel = sum(p.numel() for p in own)
        report.weight_parameters += numel
        owner = _converted_owner(name, converted_set)
        if owner is not None:
            report.covered_parameters += numel
        elif not any(_within(name, n) for n in left_float):
            report.unsupported[name or "<root>"] = type(module).__name__
    log.log(logging.WARNING if report.unsupported else logging.INFO, report.line())
    return report


def _within(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".") or parent == ""


def _converted_owner(name: str, converted: set[str]) -> str | None:
    """The converted layer ``name`` belongs to (itself, or an attention block's out_proj)."""
    while True:
        if name in converted:
            return name
        if "." not in name:
            return "" if "" in converted and name else None
        name = name.rpartition(".")[0]
