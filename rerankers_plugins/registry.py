"""The one registry: backend names, the classes they build, their adapter conveniences, and the
strategies a pipeline file can name.

A backend name maps to a :class:`Backend`: the ``"module:Class"`` it builds (imported on first use)
and, for built-in backends, the convenience class both adapters generate from it (for example
``CrossEncoderRerank``, whose fields are the backend's options). Third-party packages add backends
through the entry-point group ``rerankers_plugins.scorers``::

    [project.entry-points."rerankers_plugins.scorers"]
    my-backend = "my_package.scorer:MyScorer"

Backends are never guessed from a substring of a model name.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from rerankers_plugins.errors import ConfigError

if TYPE_CHECKING:
    from rerankers_plugins.pipeline.leaves import ScorerLike

__all__ = [
    "BACKENDS",
    "ENTRY_POINT_GROUP",
    "STRATEGIES",
    "Backend",
    "available",
    "get_scorer",
    "load",
    "register",
]

ENTRY_POINT_GROUP = "rerankers_plugins.scorers"


@dataclass(frozen=True)
class Backend:
    """``target``: ``"module:Class"``. ``convenience``: the class name both adapters generate
    (None: no convenience), whose fields are the target's constructor parameters (see
    :func:`rerankers_plugins.integrations._options.option_fields`) and whose ``positional`` field
    is passed first to the class."""

    target: str
    convenience: str | None = None
    positional: str | None = None
    summary: str = ""


BACKENDS: dict[str, Backend] = {
    "cross-encoder": Backend(
        "rerankers_plugins.scorers.cross_encoder:CrossEncoderScorer",
        "CrossEncoderRerank",
        "model",
        "a sentence-transformers cross-encoder built from ``model``",
    ),
    "seq2seq": Backend(
        "rerankers_plugins.scorers.seq2seq:Seq2SeqScorer",
        "Seq2SeqRerank",
        "model",
        "a MonoT5 or RankT5 (seq2seq) model built from ``model``",
    ),
    "poly-encoder": Backend(
        "rerankers_plugins.scorers.poly_encoder:PolyEncoderScorer",
        "PolyEncoderRerank",
        "model",
        "a poly-encoder built from ``model``; document codes are cached",
    ),
    "bi-encoder": Backend(
        "rerankers_plugins.scorers.bi_encoder:BiEncoderScorer",
        "BiEncoderRerank",
        "model",
        "a bi-encoder (cosine) built from ``model``",
    ),
    "colbert": Backend(
        "rerankers_plugins.scorers.colbert:ColBERTScorer",
        "ColBERTRerank",
        "model",
        "ColBERT late interaction (MaxSim) built from ``model``; document vectors are cached",
    ),
    "cohere": Backend(
        "rerankers_plugins.scorers.cohere:CohereScorer",
        "CohereRerank",
        "model",
        "the Cohere Rerank API (key from ``api_key`` or ``COHERE_API_KEY``)",
    ),
    "remote": Backend(
        "rerankers_plugins.scorers.remote:RemoteScorer",
        "RemoteRerank",
        "base_url",
        "a rerank server (TEI, vLLM, Infinity)",
    ),
    "llm-listwise": Backend(
        "rerankers_plugins.scorers.llm:LLMListwiseRanker",
        "LLMListwiseRerank",
        "llm",
        "a listwise LLM reranker (RankGPT, sliding window; top_n only)",
    ),
    "llm-pointwise": Backend(
        "rerankers_plugins.scorers.llm:LLMPointwiseScorer",
        "LLMPointwiseRerank",
        "llm",
        "a pointwise LLM reranker (each passage judged alone)",
    ),
    "llm-pairwise": Backend(
        "rerankers_plugins.scorers.llm:LLMPairwiseRanker",
        "LLMPairwiseRerank",
        "llm",
        "a pairwise LLM reranker (comparisons for the top k; top_n only)",
    ),
    "bm25": Backend("rerankers_plugins.scorers.lexical:BM25Scorer"),
    "fake": Backend("rerankers_plugins.scorers.fake:FakeScorer"),
}

#: pipeline-file keys (see :mod:`rerankers_plugins.spec`) -> the strategy they build
STRATEGIES: dict[str, str] = {
    "threshold": "rerankers_plugins.pipeline.threshold:Threshold",
    "selective": "rerankers_plugins.pipeline.selective:Selective",
    "cascade": "rerankers_plugins.pipeline.cascade:Cascade",
    "hybrid": "rerankers_plugins.pipeline.hybrid:Hybrid",
    "cached": "rerankers_plugins.pipeline.cache:CachedScorer",
    "long_document": "rerankers_plugins.pipeline.long_document:LongDocument",
}

_registered: dict[str, str] = {}


def load(target: str) -> Any:
    """Import ``"module:Attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def register(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:Class"`` for :func:`get_scorer` (overrides entry points)."""
    if ":" not in target:
        raise ConfigError(f"target must look like 'package.module:Class', got {target!r}")
    _registered[name] = target


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every known backend name and the ``"module:Class"`` it resolves to. A third-party entry
    point never replaces a built-in name: it is warned about and left out (``register`` is the
    explicit way to override one)."""
    plugins = _entry_points()
    for name in sorted(set(plugins) & set(BACKENDS)):
        if plugins[name] != BACKENDS[name].target:
            warnings.warn(
                f"entry point {name!r} -> {plugins[name]!r} (group {ENTRY_POINT_GROUP!r}) has the name of a "
                f"built-in backend and is not used; {name!r} stays {BACKENDS[name].target!r}",
                RuntimeWarning,
                stacklevel=2,
            )
        del plugins[name]
    return {**{n: b.target for n, b in BACKENDS.items()}, **plugins, **_registered}


def get_scorer(name: str, /, **kwargs: Any) -> ScorerLike:
    """Build the backend registered as ``name`` with ``kwargs``.

    >>> get_scorer("fake").name
    'fake-overlap'
    """
    table = available()
    try:
        target = table[name]
    except KeyError:
        raise ConfigError(f"unknown scorer {name!r}; known: {sorted(table)}") from None
    built: ScorerLike = load(target)(**kwargs)
    return built
