"""Lightning precision plugins. Importing this package needs pytorch-lightning."""

from effplug.precision.lowprec import LNSPrecision, LUQPrecision
from effplug import strategies  # noqa: F401  (registers the strategy names)

__all__ = ["LNSPrecision", "LUQPrecision"]
