"""Deprecated: this module is ``effplug.parallel.pipeline.acsgd`` now (AC-SGD's codec, its stage and the runners sit together)."""

import warnings

from effplug.parallel.pipeline.acsgd import *  # noqa: F403
from effplug.parallel.pipeline.acsgd import (  # noqa: F401
    ACSGDCodec,
    ACSGDConfig,
    activation_wire_nbytes,
    batch_sample_ids,
    gradient_wire_nbytes,
    row_sample_ids,
)

warnings.warn("effplug.comm.acsgd is now effplug.parallel.pipeline.acsgd; import it from there", FutureWarning, stacklevel=2)
