"""Lazy imports of optional dependencies, each tied to the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from rerankers_plugins.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install "rerankers-plugins[extra]"``.

    Only a missing top-level package is translated; an ImportError raised *inside* an installed
    package (a broken install) propagates unchanged so that its real cause stays visible.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise MissingExtraError(module, extra) from exc
        raise
