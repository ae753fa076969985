"""The protocols every backend implements, and a small base class with the async default.

A ``Scorer`` turns (query, texts) into one float per text, in the same order, on a declared
:class:`~rerankers_plugins.types.ScoreScale`. A ``Ranker`` (listwise LLMs) returns a permutation
instead. Sorting, top_n and thresholds are *not* a scorer's job: they live once, in
:func:`rerankers_plugins.pipeline.rerank.rerank`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rerankers_plugins.types import ScoreScale

__all__ = ["BaseScorer", "Ranker", "ScoreResult", "Scorer"]


@dataclass(frozen=True)
class ScoreResult:
    """What a scorer's optional ``score_details`` / ``rank_details`` methods return.

    ``values`` are the scores (or, for a Ranker, the permutation); ``info`` is merged into every
    returned candidate's ``Scored.details`` (e.g. the number of LLM calls); ``per_item``, aligned
    with the texts, into that candidate's details only (e.g. the passage a long document was
    scored by). :func:`rerankers_plugins.rerank` prefers these methods where a scorer has them.
    Strategies implement ``score_candidates(query, candidates)`` instead, to see ids, metadata
    and retrieval scores.
    """

    values: list[Any]
    info: Mapping[str, Any] = field(default_factory=dict)
    per_item: Sequence[Mapping[str, Any]] | None = None
    #: a strategy's final order (best first) of the positions to return; positions left out are
    #: dropped by the strategy's own documented rule (a cascade stage's ``keep``, for instance).
    order: Sequence[int] | None = None
    #: positions carried without a score on the scale (a selective strategy's unreranked tail):
    #: thresholds do not apply to them, and their ``details["reranked"]`` is False.
    unscored: frozenset[int] = frozenset()


@runtime_checkable
class Scorer(Protocol):
    """Scores every text against the query: ``len(score(q, texts)) == len(texts)``, same order."""

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> ScoreScale: ...

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Ranker(Protocol):
    """Orders texts by relevance: ``rank(q, texts)`` is a permutation of ``range(len(texts))``, best first."""

    @property
    def name(self) -> str: ...

    def rank(self, query: str, texts: Sequence[str]) -> list[int]: ...


class BaseScorer:
    """Convenience base: subclasses set ``name`` and ``scale`` and implement :meth:`score`.

    :meth:`ascore` runs :meth:`score` in a worker thread so that an event loop is never blocked
    by model compute; backends with a native async client override it.
    """

    name: str = "scorer"
    scale: ScoreScale = ScoreScale.LOGIT

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scale={self.scale.value})"
