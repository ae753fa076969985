"""The test suite's optional imports. Every package the tests use is in the ``dev`` extra, so a
missing one is an incomplete install: it fails the run loudly, naming what to install, instead of
turning tests into skips that read as a green run."""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import pytest

#: set by CI's floor job, which runs the scorers' tests on the oldest releases the extras accept with
#: only the packages those tests need: there, and only there, a missing package skips
PARTIAL = os.environ.get("RERANKERS_TESTS_PARTIAL_ENV") == "1"


def dev(module: str) -> ModuleType:
    """``import module``; ImportError naming the dev extra where it is missing (a skip only in a
    partial environment that says so: :data:`PARTIAL`)."""
    if PARTIAL:
        return pytest.importorskip(module, reason=f"{module} is not in this partial environment")
    try:
        with warnings.catch_warnings():  # a package's own import-time notices (as importorskip does)
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is missing: the test suite needs the dev extra (pip install -e '.[dev]'); "
            "a missing extra must not read as skipped tests"
        ) from exc
