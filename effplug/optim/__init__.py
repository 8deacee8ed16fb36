"""Optimizers: Madam and LNS-Madam (multiplicative updates), LARS and LAMB (layer-wise trust ratios for large
batches), and the learning-rate scaling for a larger effective batch."""

from effplug.optim.lamb import LAMB
from effplug.optim.lars import LARS
from effplug.optim.madam import LNSMadam, Madam
from effplug.optim.scaling import BatchScaling, effective_batch, scale_for_batch, warmup_schedule
from effplug.optim.trust_ratio import exclude_bias_and_norm, trust_ratio

__all__ = ["LAMB", "LARS", "BatchScaling", "LNSMadam", "Madam", "effective_batch", "exclude_bias_and_norm",
           "scale_for_batch", "trust_ratio", "warmup_schedule"]
