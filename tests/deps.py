"""The test suite's optional imports. Every package the tests use is in the ``dev`` extra, so a
missing one is an incomplete install: it fails the run loudly, naming what to install, instead of
turning tests into skips that read as a green run."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def dev(module: str) -> ModuleType:
    """``import module``; ImportError naming the dev extra where it is missing."""
    try:
        with warnings.catch_warnings():  # a package's own import-time notices (as importorskip does)
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is missing: the test suite needs the dev extra (pip install -e '.[dev]'); "
            "a missing extra must not read as skipped tests"
        ) from exc
