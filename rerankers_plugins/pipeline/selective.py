"""Selective reranking: rerank only the head of the incoming list, or skip when it already decides."""

from __future__ import annotations

import logging
from typing import Literal

from rerankers_plugins._validate import as_int, as_real
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy
from rerankers_plugins.pipeline.ranking import Ranking, Strategy

__all__ = ["Selective"]

logger = logging.getLogger(__name__)


def _retrieval_scores(ranking: Ranking) -> list[float]:
    """Every candidate's retrieval score, highest first; ConfigError when one has none."""
    retrieval = [e.candidate.retrieval_score for e in ranking]
    missing = [e.label for e in ranking if e.candidate.retrieval_score is None]
    if missing:
        raise ConfigError(
            "Selective's gate (skip_if_margin / skip_if_top) needs every candidate's retrieval_score; "
            f"candidates {', '.join(missing[:5])} have none (LangChain: set the adapter's retrieval_score_key)"
        )
    return sorted((float(r) for r in retrieval if r is not None), reverse=True)


class Selective(Strategy):
    """Rerank the first ``k`` candidates (in the order they arrive); the rest follow them or are dropped.

    ``rest="keep"`` (default) returns the tail after the reranked head, in its incoming order,
    marked ``details["reranked"] = False``: no threshold applies to it, at any depth (it has no
    score on the scale); its ``score`` is the lowest head score (or its incoming score when the
    head is empty). ``rest="drop"`` returns the head only; the tail is marked dropped, unreranked
    (with its incoming score: the model never saw it).

    The gate skips the model entirely when the first stage already decides, from the candidates'
    ``retrieval_score``: ``skip_if_margin`` (top-1 minus top-2 at least this) or ``skip_if_top``
    (top-1 at least this). A skipped query returns the incoming order, unreranked, logged at INFO.
    """

    def __init__(
        self,
        scorer: ScorerLike,
        *,
        k: int = 20,
        rest: Literal["keep", "drop"] = "keep",
        skip_if_margin: float | None = None,
        skip_if_top: float | None = None,
    ) -> None:
        self.k = as_int(k, "k", minimum=1) or 1
        if rest not in ("keep", "drop"):
            raise ConfigError(f"rest must be 'keep' or 'drop', got {rest!r}")
        self.inner = as_strategy(scorer)
        self.scale = self.inner.scale
        self.rest = rest
        self.skip_if_margin = as_real(skip_if_margin, "skip_if_margin", allow_none=True)
        self.skip_if_top = as_real(skip_if_top, "skip_if_top", allow_none=True)
        self.name = f"selective({self.inner.name}, k={self.k})"

    def gate(self, ranking: Ranking) -> str | None:
        """Why reranking is skipped for ``ranking`` (the gate, from its retrieval scores), or None
        when the head is reranked."""
        if self.skip_if_margin is None and self.skip_if_top is None:
            return None
        top = _retrieval_scores(ranking)
        if self.skip_if_top is not None and top and top[0] >= self.skip_if_top:
            return f"top retrieval score {top[0]:.4g} >= {self.skip_if_top}"
        if self.skip_if_margin is not None and len(top) >= 2 and top[0] - top[1] >= self.skip_if_margin:
            return f"retrieval margin {top[0] - top[1]:.4g} >= {self.skip_if_margin}"
        return None

    def _skipped(self, ranking: Ranking, reason: str) -> Ranking:
        logger.info("%s: reranking skipped (%s)", self.name, reason)
        return ranking.then(
            [e.passed() for e in ranking], by=self.name, scale=self.scale, info={"skipped": reason}
        )

    def _merge(self, ranking: Ranking, head: Ranking) -> Ranking:
        scores = [e.score for e in head if e.reranked]
        floor = min(scores) if scores else None
        rest = ranking.entries[self.k :]
        if self.rest == "keep":
            kept, cut = [*head.entries, *(e.passed(floor) for e in rest)], []
        else:  # the tail was not scored here: dropped as unreranked, with its incoming score
            kept, cut = list(head.entries), [e.passed() for e in rest]
        return ranking.then(
            kept,
            by=self.name,
            dropped=head.dropped,
            cut=cut,
            default_reason=f"beyond the reranked head (k={self.k}, rest='drop')",
            scale=self.scale,
            info={**head.info, "reranked_head": min(self.k, len(ranking)), "rest": self.rest},
        )

    def children(self) -> tuple[Strategy, ...]:
        return (self.inner,)

    def run(self, query: str, ranking: Ranking) -> Ranking:
        reason = self.gate(ranking)
        if reason is not None:
            return self._skipped(ranking, reason)
        head = self.inner.run(query, ranking.sub(ranking.entries[: self.k]))
        return self._merge(ranking, head)

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        reason = self.gate(ranking)
        if reason is not None:
            return self._skipped(ranking, reason)
        head = await self.inner.arun(query, ranking.sub(ranking.entries[: self.k]))
        return self._merge(ranking, head)
