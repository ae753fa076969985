"""Explicit backend registry: a name maps to a ``"module:Class"`` string, imported on first use.

Third-party packages add backends through the entry-point group ``rerankers_plugins.scorers``::

    [project.entry-points."rerankers_plugins.scorers"]
    my-backend = "my_package.scorer:MyScorer"

Backends are never guessed from a substring of a model name.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from rerankers_plugins.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "available", "get_scorer", "register"]

ENTRY_POINT_GROUP = "rerankers_plugins.scorers"

_BUILTIN: dict[str, str] = {
    "cross-encoder": "rerankers_plugins.scorers.cross_encoder:CrossEncoderScorer",
    "bi-encoder": "rerankers_plugins.scorers.bi_encoder:BiEncoderScorer",
    "colbert": "rerankers_plugins.scorers.colbert:ColBERTScorer",
    "cohere": "rerankers_plugins.scorers.cohere:CohereScorer",
    "remote": "rerankers_plugins.scorers.remote:RemoteScorer",
    "llm-listwise": "rerankers_plugins.scorers.llm:LLMListwiseScorer",
    "llm-pointwise": "rerankers_plugins.scorers.llm:LLMPointwiseScorer",
    "llm-pairwise": "rerankers_plugins.scorers.llm:LLMPairwiseScorer",
    "bm25": "rerankers_plugins.scorers.lexical:BM25Scorer",
    "fake": "rerankers_plugins.scorers.fake:FakeScorer",
}
_registered: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:Class"`` for :func:`get_scorer` (overrides entry points)."""
    if ":" not in target:
        raise ConfigError(f"target must look like 'package.module:Class', got {target!r}")
    _registered[name] = target


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every known backend name and the ``"module:Class"`` it resolves to."""
    return {**_BUILTIN, **_entry_points(), **_registered}


def get_scorer(name: str, /, **kwargs: Any) -> Any:
    """Build the backend registered as ``name`` with ``kwargs``.

    >>> get_scorer("fake").name
    'fake-overlap'
    """
    table = available()
    try:
        target = table[name]
    except KeyError:
        raise ConfigError(f"unknown scorer {name!r}; known: {sorted(table)}") from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**kwargs)
