"""Optimizers: Madam (multiplicative weight updates) and LNS-Madam (updates on a logarithmic grid)."""

from effplug.optim.madam import LNSMadam, Madam

__all__ = ["LNSMadam", "Madam"]
