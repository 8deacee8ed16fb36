"""Per-property encoders of LPG2vec (Besta et al., "Neural Graph Databases", LoG 2022, Sec. 3.2): one class per
kind of property, each fitted on a training split and turning a column of raw values into feature columns.

Every encoder has the same contract:
- ``fit(values)`` learns from a list of raw values (``None`` or NaN is missing);
- ``transform(values)`` returns a float tensor ``[len(values), width]``;
- ``state_dict()`` / ``load_state_dict()`` hold plain tensors, ints and strings.

Missing values and values never seen in fit go to a defined column, never to garbage: numeric kinds add a
``missing`` indicator, categories add an ``unknown`` column, strings add ``missing``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from effplug.logs import log_once

log = logging.getLogger("effplug.graphs")

KINDS = ("numerical", "large_number", "number_to_bin", "category", "string")


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _numbers(values, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 values with missing as 0, bool missing mask); a non-number raises naming the property.
    An infinite value cannot be scaled: it is encoded as missing, with one WARNING."""
    missing, out = [], []
    for v in values:
        if is_missing(v):
            missing.append(True)
            out.append(0.0)
        elif isinstance(v, (bool, int, float)):
            infinite = isinstance(v, float) and math.isinf(v)
            if infinite:
                log_once(log, f"lpg-inf:{owner}", "effplug.graphs: property %r holds infinite values; they are "
                         "encoded as missing", owner)
            missing.append(infinite)
            out.append(0.0 if infinite else float(v))
        else:
            raise ValueError(f"{owner}: {v!r} is not a number; encode this property as 'category' or 'string'")
    return torch.tensor(out, dtype=torch.float64), torch.tensor(missing, dtype=torch.bool)


class PropertyEncoder:
    kind = ""

    def __init__(self, name: str = ""):
        self.name = name
        self.fitted = False

    @property
    def width(self) -> int:
        raise NotImplementedError

    @property
    def columns(self) -> list[str]:
        raise NotImplementedError

    def fit(self, values: Sequence) -> PropertyEncoder:
        raise NotImplementedError

    def transform(self, values: Sequence) -> torch.Tensor:
        raise NotImplementedError

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}({self.name!r}) is not fitted; call fit() on the training split")

    def state_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name}

    def load_state_dict(self, state: dict) -> None:
        self.name, self.fitted = state["name"], True


class NumericalEncoder(PropertyEncoder):
    """Min-max scaling, ``(x - min) / (max - min)`` over the training values; values outside that range are
    clipped to [0, 1]. Columns: the scaled value and a ``missing`` indicator."""

    kind = "numerical"

    def __init__(self, name: str = ""):
        super().__init__(name)
        self.low, self.high = 0.0, 1.0

    @property
    def width(self) -> int:
        return 2

    @property
    def columns(self) -> list[str]:
        return [self.name, f"{self.name}:missing"]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fit(self, values):
        x, missing = _numbers(values, self.name)
        present = self._prepare(x[~missing])
        self.low, self.high = (float(present.min()), float(present.max())) if len(present) else (0.0, 1.0)
        self.fitted = True
        return self

    def transform(self, values):
        self._require_fit()
        x, missing = _numbers(values, self.name)
        span = self.high - self.low
        scaled = ((self._prepare(x) - self.low) / span).clamp(0.0, 1.0) if span > 0 else torch.zeros_like(x)
        scaled[missing] = 0.0
        return torch.stack([scaled, missing.double()], 1).float()

    def state_dict(self):
        return {**super().state_dict(), "low": self.low, "high": self.high}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.low, self.high = float(state["low"]), float(state["high"])


class LargeNumberEncoder(NumericalEncoder):
    """Numbers spanning decades (amounts, counts): the signed log ``sign(x)·log(1 + |x|)``, then min-max as
    :class:`NumericalEncoder`, so one huge value does not squash every other into 0."""

    kind = "large_number"

    def _prepare(self, x):
        return x.sign() * x.abs().log1p()


class NumberToBinEncoder(PropertyEncoder):
    """Quantile bins fitted on the training values (pandas ``qcut``'s rule: ``bins`` equal-count intervals,
    duplicate edges merged), one-hot. Values below or above the training range fall in the first or last
    bin. Columns: one per bin and a ``missing`` indicator."""

    kind = "number_to_bin"

    def __init__(self, name: str = "", bins: int = 8):
        super().__init__(name)
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"NumberToBinEncoder({name!r}) bins={bins!r}: use an integer >= 2")
        self.bins = bins
        self.edges = torch.zeros(0, dtype=torch.float64)  # inner edges, len = bins actually kept - 1

    @property
    def width(self) -> int:
        return len(self.edges) + 2

    @property
    def columns(self) -> list[str]:
        return [f"{self.name}:bin{i}" for i in range(len(self.edges) + 1)] + [f"{self.name}:missing"]

    def fit(self, values):
        x, missing = _numbers(values, self.name)
        present = x[~missing]
        if len(present):
            q = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)[1:-1]
            self.edges = torch.unique(torch.quantile(present, q))
        self.fitted = True
        return self

    def transform(self, values):
        self._require_fit()
        x, missing = _numbers(values, self.name)
        index = torch.bucketize(x, self.edges, right=True)
        out = torch.zeros(len(x), self.width)
        out[torch.arange(len(x)), index] = 1.0
        out[missing] = 0.0
        out[missing, -1] = 1.0
        return out

    def state_dict(self):
        return {**super().state_dict(), "bins": self.bins, "edges": self.edges.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.bins, self.edges = int(state["bins"]), state["edges"].to(torch.float64)


def _tokens(value, separator: str) -> list[str]:
    if is_missing(value):
        return []
    if isinstance(value, str):
        return [t for t in value.split(separator) if t] if separator else [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(t) for t in value]
    return [str(value)]


class CategoryEncoder(PropertyEncoder):
    """Multi-hot over the tokens seen in fit: a vertex's labels, an edge's type, or a categorical property
    (a string, or a list/set of strings; strings split at ``separator``, Neo4j's ``;``, when it is set).
    ``max_categories`` keeps the most frequent tokens. Columns: one per token and ``unknown`` (some token was
    not kept). An empty or missing value is all zeros."""

    kind = "category"

    def __init__(self, name: str = "", max_categories: int | None = None, separator: str = ";"):
        super().__init__(name)
        self.max_categories, self.separator = max_categories, separator
        self.vocabulary: list[str] = []

    @property
    def width(self) -> int:
        return len(self.vocabulary) + 1

    @property
    def columns(self) -> list[str]:
        return [f"{self.name}={t}" for t in self.vocabulary] + [f"{self.name}:unknown"]

    def fit(self, values):
        counts = Counter(t for v in values for t in _tokens(v, self.separator))
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        self.vocabulary = sorted(ranked[: self.max_categories] if self.max_categories else ranked)
        self.fitted = True
        return self

    def transform(self, values):
        self._require_fit()
        index = {t: i for i, t in enumerate(self.vocabulary)}
        out = torch.zeros(len(values), self.width)
        for row, value in enumerate(values):
            for token in _tokens(value, self.separator):
                out[row, index.get(token, len(self.vocabulary))] = 1.0
        return out

    def state_dict(self):
        return {**super().state_dict(), "vocabulary": list(self.vocabulary), "separator": self.separator,
                "max_categories": self.max_categories or 0}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.vocabulary, self.separator = list(state["vocabulary"]), state["separator"]
        self.max_categories = int(state["max_categories"]) or None


class HashingNgramEmbedder:
    """The offline string embedder: character n-grams (with ``^``/``$`` boundary marks) hashed by CRC32 into
    ``dim`` signed buckets (the hashing trick, Weinberger et al. 2009), L2-normalised. Stateless and the same
    on every machine (CRC32, not Python's salted ``hash``), so no model weights are needed."""

    def __init__(self, dim: int = 64, n: int = 3):
        if dim < 1 or n < 1:
            raise ValueError(f"HashingNgramEmbedder(dim={dim}, n={n}): both must be positive")
        self.dim, self.n = dim, n

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            padded = f"^{text.lower()}$"
            for i in range(max(1, len(padded) - self.n + 1)):
                h = zlib.crc32(padded[i:i + self.n].encode())
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 == 0 else -1.0
        return torch.nn.functional.normalize(out, dim=1)

    def state_dict(self) -> dict:
        return {"embedder": "hashing", "dim": self.dim, "n": self.n}


class StringEncoder(PropertyEncoder):
    """Free text through a pluggable embedder: any callable from a list of strings to a ``[n, d]`` tensor,
    such as a sentence-transformer's ``encode`` (the authors use all-MiniLM-L6-v2). The default is
    :class:`HashingNgramEmbedder`. Columns: the ``d`` embedding dimensions and ``missing``."""

    kind = "string"

    def __init__(self, name: str = "", embedder: Callable[[Sequence[str]], torch.Tensor] | None = None):
        super().__init__(name)
        self.embedder = embedder if embedder is not None else HashingNgramEmbedder()
        self.dim = 0

    @property
    def width(self) -> int:
        return self.dim + 1

    @property
    def columns(self) -> list[str]:
        return [f"{self.name}:e{i}" for i in range(self.dim)] + [f"{self.name}:missing"]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = torch.as_tensor(self.embedder(texts), dtype=torch.float32)
        if out.dim() != 2 or out.shape[0] != len(texts):
            raise ValueError(f"StringEncoder({self.name!r}): the embedder must return [len(texts), dim]; got "
                             f"{tuple(out.shape)} for {len(texts)} texts")
        return out

    def fit(self, values):
        self.dim = self._embed(["probe"]).shape[1]
        self.fitted = True
        return self

    def transform(self, values):
        self._require_fit()
        missing = torch.tensor([is_missing(v) for v in values], dtype=torch.bool)
        out = torch.zeros(len(values), self.width)
        present = [str(v) for v in values if not is_missing(v)]
        if present:
            out[~missing, : self.dim] = self._embed(present)
        out[missing, -1] = 1.0
        return out

    def state_dict(self):
        embedder = getattr(self.embedder, "state_dict", None)
        return {**super().state_dict(), "dim": self.dim, "embedder": embedder() if embedder else {}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.dim = int(state["dim"])
        saved = state.get("embedder") or {}
        if saved.get("embedder") == "hashing" and isinstance(self.embedder, HashingNgramEmbedder):
            self.embedder = HashingNgramEmbedder(saved["dim"], saved["n"])


ENCODERS = {cls.kind: cls for cls in (NumericalEncoder, LargeNumberEncoder, NumberToBinEncoder, CategoryEncoder,
                                      StringEncoder)}


def infer_kind(values: Sequence) -> str | None:
    """A kind for a property column from its training values; ``None`` when no encoder fits (dicts, bytes)."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        return None
    if all(isinstance(v, (bool, int, float)) for v in present):
        magnitudes = [abs(float(v)) for v in present if v]
        if magnitudes and max(magnitudes) / max(min(magnitudes), 1e-12) > 1e4:
            return "large_number"
        return "numerical"
    if all(isinstance(v, (list, tuple, set, frozenset)) for v in present):
        return "category"
    if all(isinstance(v, str) for v in present):
        distinct = len(set(present))
        return "category" if distinct <= max(32, len(present) // 20) else "string"
    return None
