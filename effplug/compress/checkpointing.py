"""Gradient checkpointing of a model's repeated blocks, for ``CompressionConfig(checkpoint=True)``: forward then
saves only each block's input (the checkpoint boundary), the compressor stores those boundaries in a few bits,
and backward recomputes each block from the decompressed boundary. The pairing measured best in memory per unit
of time (docs/compressed-activations.md).

The checkpoint is torch's *reentrant* one on purpose: it keeps a block's inputs with ``save_for_backward``,
which the compressor's pack hook sees. The non-reentrant one keeps them as plain Python references, out of
reach of any saved-tensor hook, so nothing would be compressed. It restores the RNG state, so dropout
repeats. HF models get ``gradient_checkpointing_enable(use_reentrant=True)``; any other model has each block of
its outermost ``nn.ModuleList``s (a transformer's layers; an encoder's and a decoder's) wrapped. ``disable()`` undoes exactly what ``enable()``
did.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _hf_model(model: nn.Module):
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module,
                                                                                 "gradient_checkpointing_enable"):
            return module
    return None


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` of two or more blocks not inside another one (an encoder's and a decoder's layers)."""
    chosen: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and not any(
                name.startswith(f"{outer}.") for outer, _ in chosen):
            chosen.append((name, module))
    return chosen


class BlockCheckpointing:
    def __init__(self, model: nn.Module):
        self.model = model
        self._hf = None
        self._wrapped: list[nn.Module] = []

    def enable(self) -> str:
        """Turn checkpointing on; returns what was checkpointed, for the log."""
        hf = _hf_model(self.model)
        if hf is not None:
            if not getattr(hf, "is_gradient_checkpointing", False):
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
                if getattr(hf.config, "use_cache", False):
                    hf.config.use_cache = False  # a KV cache is not recomputed, and HF refuses it while checkpointing
                self._hf = hf
            return f"{type(hf).__name__} layers (HF gradient checkpointing)"
        found = _block_lists(self.model)
        if not found:
            raise ValueError(f"CompressionConfig(checkpoint=True) checkpoints a model's repeated blocks, but "
                             f"{type(self.model).__name__} has neither HF gradient checkpointing nor an nn.ModuleList "
                             "of blocks; wrap your blocks in torch.utils.checkpoint yourself, or set checkpoint=False")
        for _, blocks in found:
            for block in blocks:
                block.forward = functools.partial(_checkpointed, block.forward)
                self._wrapped.append(block)
        return ", ".join(f"the {len(blocks)} blocks of {name or 'the model'}" for name, blocks in found)

    def disable(self) -> None:
        if self._hf is not None:
            self._hf.gradient_checkpointing_disable()
            self._hf = None
        for block in self._wrapped:
            del block.forward  # the class's forward shows through again
        self._wrapped = []


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # reentrant checkpoint takes positional tensors only: keyword arguments are bound first
    return checkpoint(functools.partial(forward, **kwargs), *args, use_reentrant=True)
