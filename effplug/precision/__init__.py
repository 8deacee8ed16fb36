"""Lightning precision plugins. Importing this package needs pytorch-lightning."""

from effplug.precision.lowprec import LNSPrecision, LUQPrecision

__all__ = ["LNSPrecision", "LUQPrecision"]
