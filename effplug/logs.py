"""One way to report something once: a skipped layer, a non-finite batch, a knob that does nothing."""

from __future__ import annotations

import logging

_said: set[tuple[str, str]] = set()


def log_once(logger: logging.Logger, key: str, message: str, *args, level: int = logging.WARNING,
             seen: set | None = None) -> bool:
    """Log ``message % args`` the first time ``key`` is seen on ``logger``; returns whether it was logged.

    ``seen`` scopes "once" to an owner (an engine, a compressor): pass a set that lives with it, and a new
    owner reports again. Without it, once per process.
    """
    said = _said if seen is None else seen
    if (logger.name, key) in said:
        return False
    said.add((logger.name, key))
    logger.log(level, message, *args)
    return True


def forget(prefix: str = "") -> None:
    """Allow messages whose key starts with ``prefix`` to be logged again (tests, a new run in one process)."""
    for entry in [e for e in _said if e[1].startswith(prefix)]:
        _said.discard(entry)
