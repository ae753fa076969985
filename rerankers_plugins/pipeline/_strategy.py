"""Base of the strategies: scorer-like objects that wrap other scorers.

A strategy implements ``score_candidates(query, candidates) -> ScoreResult`` (it sees ids, metadata
and retrieval scores) and is also a plain Scorer (``score(query, texts)``), so it can be passed
anywhere a scorer goes: to :func:`rerankers_plugins.rerank`, to both adapters, or into another
strategy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.rerank import scorer_name, scorer_scale
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate, ScoreScale

__all__ = ["Strategy", "as_candidates", "require_scores"]


def as_candidates(texts: Sequence[str]) -> list[Candidate]:
    return [Candidate(t, id=str(i)) for i, t in enumerate(texts)]


def require_scores(scorer: Any, what: str) -> ScoreScale:
    """The scorer's scale; ConfigError when it only ranks (``what`` needs real scores)."""
    scale = scorer_scale(scorer)
    if scale is ScoreScale.RANK_ONLY:
        raise ConfigError(f"{what} needs scores, but {scorer_name(scorer)!r} is RANK_ONLY (an order only)")
    return scale


class Strategy:
    """Subclasses set ``name`` and ``scale`` and implement :meth:`score_candidates`."""

    name: str = "strategy"
    scale: ScoreScale = ScoreScale.LOGIT

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        raise NotImplementedError

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        return await asyncio.to_thread(self.score_candidates, query, candidates)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.score_candidates(query, as_candidates(texts)).values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, scale={self.scale.value})"
