"""``CompressionReport``: what one forward's saved activations would have taken, and what was held instead."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerBytes:
    original: int = 0
    held: int = 0
    tensors: int = 0
    compressed: int = 0


@dataclass
class CompressionReport:
    """Accounting of one forward: bytes the saved activations would have taken, and bytes held instead."""

    original_bytes: int = 0
    held_bytes: int = 0
    per_layer: dict[str, LayerBytes] = field(default_factory=dict)
    kept_exact: dict[str, int] = field(default_factory=dict)  # reason -> bytes

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.held_bytes if self.held_bytes else 1.0

    def add(self, layer: str, original: int, held: int, compressed: bool) -> None:
        self.original_bytes += original
        self.held_bytes += held
        entry = self.per_layer.setdefault(layer, LayerBytes())
        entry.original += original
        entry.held += held
        entry.tensors += 1
        entry.compressed += int(compressed)

    def table(self) -> str:
        rows = ["| layer | tensors | compressed | original bytes | held bytes | ratio |", "|---|---|---|---|---|---|"]
        for name, e in self.per_layer.items():
            ratio = e.original / e.held if e.held else float("inf")
            rows.append(f"| {name} | {e.tensors} | {e.compressed} | {e.original:,} | {e.held:,} | {ratio:.2f} |")
        rows.append(f"| **total** | | | {self.original_bytes:,} | {self.held_bytes:,} | {self.ratio:.2f} |")
        return "\n".join(rows)
