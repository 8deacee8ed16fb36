"""Deprecated: this module is ``effplug.parallel.pipeline.chimera`` now (AC-SGD's codec, its stage and the runners sit together)."""

import warnings

from effplug.parallel.pipeline.chimera import *  # noqa: F403
from effplug.parallel.pipeline.chimera import ChimeraRunner  # noqa: F401

warnings.warn("effplug.parallel.chimera is now effplug.parallel.pipeline.chimera; import it from there", FutureWarning, stacklevel=2)
