"""Gradient communication compression for data-parallel training (framework-free).

``register(ddp_model, "topk", ratio=0.01)`` installs a compressor as a DDP communication hook; the Lightning
strategies (``ddp_topk``, ``ddp_natural``, ``ddp_dither``, ``ddp_cgx``,
``ddp_powersgd``) and the HF callback use the same call.
"""

from effplug.comm.base import GradientCompressor, Segment
from effplug.comm.cgx import CGXCompressor
from effplug.comm.ddp_hooks import comm_hook, register
from effplug.comm.dither import NaturalDitheringCompressor
from effplug.comm.natural import NaturalCompressor
from effplug.comm.powersgd import PowerSGDCompressor
from effplug.comm.registry import COMPRESSORS, compressor_options, make_compressor
from effplug.comm.topk import TopKCompressor

__all__ = ["COMPRESSORS", "CGXCompressor", "GradientCompressor", "NaturalCompressor", "NaturalDitheringCompressor",
           "PowerSGDCompressor", "Segment", "TopKCompressor", "comm_hook", "compressor_options", "make_compressor", "register"]
