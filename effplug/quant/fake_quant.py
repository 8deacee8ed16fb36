"""Deprecated: this module is ``effplug.quant.fake_quantizer`` now (``effplug.kernels.fake_quant`` is the kernel)."""

import warnings

from effplug.quant.fake_quantizer import *  # noqa: F403
from effplug.quant.fake_quantizer import FakeQuantize, broadcast_channels, code_range  # noqa: F401

warnings.warn("effplug.quant.fake_quant is now effplug.quant.fake_quantizer; import it from there", FutureWarning,
              stacklevel=2)
