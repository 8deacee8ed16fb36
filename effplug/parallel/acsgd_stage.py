"""Deprecated: this module is ``effplug.parallel.pipeline.acsgd_stage`` now (AC-SGD's codec, its stage and the runners sit together)."""

import warnings

from effplug.parallel.pipeline.acsgd_stage import *  # noqa: F403
from effplug.parallel.pipeline.acsgd_stage import ACSGDStageModule, ACSGDStages  # noqa: F401

warnings.warn("effplug.parallel.acsgd_stage is now effplug.parallel.pipeline.acsgd_stage; import it from there", FutureWarning, stacklevel=2)
