"""A "did you mean" for misspelled strategy names (``ddp_top_k``, ``zero_2``).

Lightning checks ``strategy not in StrategyRegistry.available_strategies()`` and then raises a generic
ValueError that lists none of effplug's names. The registry has no hook for that, so effplug gives its
registry instance an ``available_strategies`` whose list answers that one check, for an unknown name,
with Lightning's own exception type, the closest registered name and the whole list. Every other use of
the list behaves as before.
"""

from __future__ import annotations

import difflib
import sys

# the Lightning (and Fabric) function that checks a strategy flag; any other caller gets a plain list
_CHECKING_FUNCTION = "_check_config_and_set_final_flags"


def _normalized(name: str) -> str:
    return name.replace("-", "").replace("_", "")


def suggest_strategy(name: str, registered) -> str | None:
    """The registered name closest to ``name`` (ignoring ``_`` and ``-``), or None."""
    registered = list(registered)
    by_normal = {_normalized(r): r for r in registered}
    if _normalized(name) in by_normal:
        return by_normal[_normalized(name)]
    close = difflib.get_close_matches(name, registered, n=1, cutoff=0.75)
    return close[0] if close else None


class StrategyNames(list):
    """The registered names; an unknown ``name in names`` from Lightning's flag check raises with a suggestion."""

    def __contains__(self, name) -> bool:
        found = super().__contains__(name)
        if found or not isinstance(name, str) or name == "auto":
            return found
        if sys._getframe(1).f_code.co_name != _CHECKING_FUNCTION:
            return found
        suggestion = suggest_strategy(name, self)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        raise ValueError(f"You selected an invalid strategy name: `strategy={name!r}`.{hint} Registered names "
                         f"(effplug's are registered by `import effplug.strategies`): {', '.join(sorted(self))}")


def install_suggestions(registry) -> None:
    """Make ``registry.available_strategies()`` return a :class:`StrategyNames` (idempotent)."""
    if getattr(registry, "_effplug_suggests", False):
        return
    plain = type(registry).available_strategies

    def available_strategies() -> list:
        return StrategyNames(plain(registry))

    registry.available_strategies = available_strategies
    registry._effplug_suggests = True
