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


def checks_keywords(cls=None, *, also_from=None):
    """Class decorator: an unknown keyword to ``cls(...)`` raises :class:`UnknownOptionError` naming ``cls``,
    listing its valid keywords and the closest one, instead of Python's bare "unexpected keyword argument".

    For a ``**kwargs`` constructor that forwards to a parent, ``also_from`` is the parent's ``__init__`` whose
    keywords are valid too. The signature seen by ``inspect`` (and LightningCLI's jsonargparse) is unchanged.
    """
    import functools
    import inspect

    def decorate(cls):
        init = cls.__init__
        signature = inspect.signature(init)
        kinds = {p.kind for p in signature.parameters.values()}
        valid = {n for n, p in signature.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
        if inspect.Parameter.VAR_KEYWORD in kinds:
            if also_from is None:
                raise TypeError(f"checks_keywords({cls.__name__}): a **kwargs constructor needs also_from=")
            valid |= {n for n, p in inspect.signature(also_from).parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            check_options(cls.__name__, kwargs, valid)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls

    return decorate if cls is None else decorate(cls)


def name_patterns(value, field: str = "exclude") -> tuple[str, ...]:
    """Module-name patterns from a string (one pattern, never its characters) or an iterable of strings."""
    if isinstance(value, str):
        return (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        patterns = None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{field}={value!r}: give fnmatch patterns of module names, a string or a list of "
                        f"strings, e.g. {field}=['lm_head', '*.attn.*']")
    return patterns


def require_module(value, owner: str) -> None:
    """Raise naming ``owner`` unless ``value`` is a torch module."""
    import torch

    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{owner} needs a torch.nn.Module (the model to convert); got {type(value).__name__}")
