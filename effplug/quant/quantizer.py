"""``Quantizer``: the base of every forward-pass quantizer (fake quantization, once-QAT's nested weights,
LUQ's SAWB, LNS, DIR-Net's sign), so one call turns them all on or off."""

from __future__ import annotations

from torch import nn


class Quantizer(nn.Module):
    """A module that maps a tensor to its quantized value in the forward pass; ``enabled=False`` passes it."""

    def __init__(self):
        super().__init__()
        self.enabled = True

    def set_enabled(self, enabled: bool) -> Quantizer:
        self.enabled = bool(enabled)
        return self


def set_quantizers_enabled(model: nn.Module, enabled: bool, kinds: tuple = (Quantizer,)) -> nn.Module:
    """``set_enabled(enabled)`` on every quantizer of ``model`` that is an instance of one of ``kinds``."""
    for module in model.modules():
        if isinstance(module, kinds):
            module.set_enabled(enabled)
    return model
