"""effplug: efficiency research as plugins for the training loops people already have.

Importing ``effplug`` needs only torch. Lightning, transformers, deepspeed and triton doors import
their framework when used and name the extra to install if it is missing.
"""

__version__ = "0.1.0"

from effplug import codecs, kernels  # noqa: E402,F401
