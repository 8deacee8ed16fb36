"""Lightning precision plugins. Importing this package needs pytorch-lightning."""

from effplug import strategies  # noqa: F401  (registers the strategy names)
from effplug.precision.lowprec import LNSPrecision, LUQPrecision

__all__ = ["LNSPrecision", "LUQPrecision"]
