"""Old names, kept working for a while: each use warns (``FutureWarning``) with the new name and
the release that removes the old one.

Renamed options are declared per scorer (``BaseScorer.renamed``); renamed classes and attributes
go through :func:`renamed_module_attributes` and :func:`renamed_attribute`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REMOVED_IN", "renamed_attribute", "renamed_module_attributes", "warn_renamed"]

#: the release that removes every old name still accepted today
REMOVED_IN = "0.3.0"


def warn_renamed(old: str, new: str, *, stacklevel: int) -> None:
    """One FutureWarning: ``old`` is now ``new``, removed in :data:`REMOVED_IN`."""
    warnings.warn(
        f"{old} is now {new}; the old name will be removed in rerankers-plugins {REMOVED_IN}",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )


def renamed_module_attributes(module: str, renames: Mapping[str, tuple[str, Callable[[], Any]]]) -> Any:
    """A module ``__getattr__`` answering each old name of ``renames`` (old -> (new name, a function
    returning the new object)) with the new object and a FutureWarning naming the user's line."""

    def __getattr__(name: str) -> Any:
        if name in renames:
            new, target = renames[name]
            warn_renamed(f"{module}.{name}", new, stacklevel=2)
            return target()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def renamed_attribute(old: str, new: str) -> property:
    """A read-only property ``old`` that returns attribute ``new`` with a FutureWarning."""

    def get(self: Any) -> Any:
        warn_renamed(f"{type(self).__name__}.{old}", f"{type(self).__name__}.{new}", stacklevel=2)
        return getattr(self, new)

    return property(get, doc=f"Old name of :attr:`{new}` (removed in {REMOVED_IN}).")
