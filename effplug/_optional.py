"""Optional dependencies: import them with an error that names the extra to install."""

from __future__ import annotations

import importlib


def require(module: str, extra: str):
    """Import ``module`` or raise ImportError telling the user which effplug extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module.split('.')[0]} is required for this feature; install it with: pip install 'effplug[{extra}]'"
        ) from err
