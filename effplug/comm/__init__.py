"""Gradient communication compression for data-parallel training (framework-free).

``register(ddp_model, "topk", ratio=0.01)`` installs a compressor as a DDP communication hook; the Lightning
strategies (``ddp_topk``, ``ddp_natural``, ``ddp_cgx``, ``ddp_powersgd``) and the HF callback use the same call.
"""

from effplug.comm.compressors import (
    COMPRESSORS,
    CGXCompressor,
    GradientCompressor,
    NaturalCompressor,
    PowerSGDCompressor,
    Segment,
    TopKCompressor,
    compressor_options,
    make_compressor,
)
from effplug.comm.ddp_hooks import comm_hook, register

__all__ = ["COMPRESSORS", "CGXCompressor", "GradientCompressor", "NaturalCompressor", "PowerSGDCompressor",
           "Segment", "TopKCompressor", "comm_hook", "compressor_options", "make_compressor", "register"]
