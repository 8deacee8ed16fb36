"""The compressors by name: ``make_compressor("topk", ratio=0.01)``."""

from __future__ import annotations

import inspect

from effplug.comm.base import GradientCompressor
from effplug.comm.cgx import CGXCompressor
from effplug.comm.dither import NaturalDitheringCompressor
from effplug.comm.natural import NaturalCompressor
from effplug.comm.powersgd import PowerSGDCompressor
from effplug.comm.topk import TopKCompressor
from effplug.options import check_options

COMPRESSORS: dict[str, type[GradientCompressor]] = {
    "topk": TopKCompressor, "natural": NaturalCompressor, "cgx": CGXCompressor, "powersgd": PowerSGDCompressor,
    "dither": NaturalDitheringCompressor,
}


def compressor_options(name: str) -> set[str]:
    """The keyword options compressor ``name`` accepts."""
    return {k for k in inspect.signature(_compressor_class(name).__init__).parameters if k != "self"}


def _compressor_class(name: str) -> type[GradientCompressor]:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown gradient compressor {name!r}; choose one of {sorted(COMPRESSORS)}")
    return COMPRESSORS[name]


def make_compressor(compressor: str | GradientCompressor, **options) -> GradientCompressor:
    """A compressor from its name and options (or the instance itself, when no options are given)."""
    if isinstance(compressor, GradientCompressor):
        if options:
            raise ValueError(f"options {sorted(options)} were given with a ready compressor instance; set them on it")
        return compressor
    check_options(f"the {compressor!r} compressor", options, compressor_options(compressor))
    return _compressor_class(compressor)(**options)
