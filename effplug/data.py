"""Embedded data: nothing is downloaded. sklearn's bundled digits, Python's own stdlib sources, generated data."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from effplug._optional import require


@dataclass
class Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def train_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.train_x, self.train_y)

    def test_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.test_x, self.test_y)


def digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """sklearn's bundled 8x8 digits (1,797 images), as ``(N, 1, 8, 8)`` floats in [0, 1] with a fixed split.

    The split is stratified and depends only on ``seed`` (default 0), so every run sees the same data.
    """
    datasets = require("sklearn.datasets", extra="data")
    model_selection = require("sklearn.model_selection", extra="data")
    bunch = datasets.load_digits()
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        bunch.images, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )

    def images(a):
        return torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 16.0

    def labels(a):
        return torch.tensor(a, dtype=torch.int64)

    return Split(images(x_train), labels(y_train), images(x_test), labels(y_test))


@dataclass
class CharCorpus:
    """A character corpus as id tensors plus its vocabulary."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: list

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = [c for c in set(text) if c not in index]
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:5]!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def windows(self, split: str, block_size: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` random (input, next-char target) windows of ``block_size`` from one split."""
        ids = {"train": self.train, "val": self.val}[split]
        if ids.numel() <= block_size + 1:
            raise ValueError(f"the {split} split has {ids.numel()} characters; need more than block_size+1={block_size + 1}")
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, ids.numel() - block_size - 1, (count,), generator=gen)
        x = torch.stack([ids[s : s + block_size] for s in starts.tolist()])
        y = torch.stack([ids[s + 1 : s + block_size + 1] for s in starts.tolist()])
        return x, y


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files in sorted order (tests and site-packages left out)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def stdlib_text(max_chars: int = 1_000_000, val_fraction: float = 0.1, root: str | Path | None = None) -> CharCorpus:
    """A character corpus from Python's own standard-library sources.

    Files are read in sorted order and concatenated until ``max_chars``; the last ``val_fraction`` of the
    text is the validation split. The vocabulary is the sorted set of characters seen, so the result is
    deterministic for a given Python version.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    if max_chars < 1000:
        raise ValueError(f"max_chars={max_chars!r} is too small; use at least 1000")
    parts, total = [], 0
    for path in stdlib_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if total == 0:
        raise FileNotFoundError(f"no .py files found under {root or sysconfig.get_paths()['stdlib']}")
    text = "".join(parts)[:max_chars]
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(ids) * (1 - val_fraction))
    return CharCorpus(ids[:cut], ids[cut:], vocab)


def char_lm_windows(block_size: int = 64, train_windows: int = 4096, val_windows: int = 128,
                    max_chars: int = 400_000):
    """The recipes' and benchmarks' character-LM set: ``(corpus, (train_x, train_y), (val_x, val_y))``.

    ``stdlib_text(max_chars)`` cut into ``block_size`` windows with next-character targets: train windows
    drawn with seed 0, validation windows with seed 1, so every script sees the same data.
    """
    corpus = stdlib_text(max_chars=max_chars)
    return (corpus, corpus.windows("train", block_size, train_windows, seed=0),
            corpus.windows("val", block_size, val_windows, seed=1))


def synthetic(kind: str = "classification", n: int = 1024, dim: int = 32, classes: int = 4, seed: int = 0, **kw):
    """Generated data from a private generator.

    * ``classification``: Gaussian blobs, returns ``(x[n, dim], y[n])``.
    * ``regression``: ``y = x @ w + noise``, returns ``(x, y[n, 1])``.
    * ``tokens``: random token ids ``(n, seq_len)`` over ``vocab_size`` (keyword args), returns ``(x, y)``
      with ``y`` the next token.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "classification":
        centers = torch.randn(classes, dim, generator=gen) * 3
        y = torch.randint(0, classes, (n,), generator=gen)
        return centers[y] + torch.randn(n, dim, generator=gen), y
    if kind == "regression":
        x = torch.randn(n, dim, generator=gen)
        w = torch.randn(dim, 1, generator=gen)
        return x, x @ w + 0.1 * torch.randn(n, 1, generator=gen)
    if kind == "tokens":
        seq_len, vocab_size = kw.get("seq_len", 32), kw.get("vocab_size", 64)
        ids = torch.randint(0, vocab_size, (n, seq_len + 1), generator=gen)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    raise ValueError(f"kind={kind!r} is not supported; use one of classification, regression, tokens")
