"""Settings the user typed, checked where they were typed: a misspelled field names the user's own class,
lists the valid fields and suggests the closest one, before any work starts."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable


class UnknownOptionError(TypeError, ValueError):
    """An unknown keyword (a ``TypeError`` as Python raises, and a ``ValueError`` as effplug's settings do)."""


def check_options(owner: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise naming ``owner`` when ``given`` holds a name outside ``valid``, with a "did you mean"."""
    valid = sorted(set(valid))
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownOptionError(f"{owner} got unknown option(s) {', '.join(hints)}; valid options: {', '.join(valid)}")


def config_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_config(cls, owner: str, value=None, shorthand: str | None = None, **fields):
    """``cls`` from what a door received: an instance, a dict of its fields, keyword fields, or a string for
    its ``shorthand`` field (``"actnn"`` means ``method="actnn"``). Anything else fails here, with the door's name."""
    if value is None:
        check_options(owner, fields, config_fields(cls))
        return cls(**fields)
    if fields:
        raise ValueError(f"{owner}: pass either a {cls.__name__} or its fields as keywords, not both "
                         f"(got {cls.__name__} and {sorted(fields)})")
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        check_options(owner, value, config_fields(cls))
        return cls(**value)
    if isinstance(value, str) and shorthand is not None:
        return cls(**{shorthand: value})
    accepted = f"a {cls.__name__}, a dict of its fields" + (f" or a {shorthand} name" if shorthand else "")
    raise TypeError(f"{owner} takes {accepted}; got {type(value).__name__} {value!r}")
