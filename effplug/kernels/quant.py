"""Deprecated: this module is ``effplug.kernels.pack`` now (it no longer shares a name with ``effplug.quant``)."""

import warnings

from effplug.kernels.pack import *  # noqa: F403
from effplug.kernels.pack import (  # noqa: F401
    ALLOWED_BITS,
    QuantizedTensor,
    pack_codes,
    packed_nbytes,
    quantize_pack,
    unpack_codes,
    unpack_dequantize,
    validate_quant_args,
)
from effplug.kernels.pack import __doc__ as _pack_doc  # noqa: F401

warnings.warn("effplug.kernels.quant is now effplug.kernels.pack; import it from there", FutureWarning, stacklevel=2)
