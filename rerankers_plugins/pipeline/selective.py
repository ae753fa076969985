"""Selective reranking: rerank only the head of the first-stage list, or skip when it already decides."""

from __future__ import annotations

import logging
from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline._strategy import Strategy
from rerankers_plugins.pipeline.rerank import ascore_with, score_with, scorer_name, scorer_scale
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate

__all__ = ["Selective"]

logger = logging.getLogger(__name__)


class Selective(Strategy):
    """Rerank the first ``k`` candidates (first-stage order); the rest follow them or are dropped.

    ``rest="keep"`` (default) returns the tail after the reranked head, in its first-stage order,
    marked ``details["reranked"] = False`` (thresholds do not apply to it: it has no score; its
    ``score`` is the lowest head score, or 0.0). ``rest="drop"`` returns the head only.

    The gate skips the model entirely when the first stage already decides, from the candidates'
    ``retrieval_score``: ``skip_if_margin`` (top-1 minus top-2 at least this) or ``skip_if_top``
    (top-1 at least this). A skipped query returns the first-stage order, logged at INFO.
    """

    def __init__(
        self,
        scorer: Any,
        *,
        k: int = 20,
        rest: Literal["keep", "drop"] = "keep",
        skip_if_margin: float | None = None,
        skip_if_top: float | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}")
        if rest not in ("keep", "drop"):
            raise ConfigError(f"rest must be 'keep' or 'drop', got {rest!r}")
        self.scorer = scorer
        self.scale = scorer_scale(scorer)
        self.k, self.rest = k, rest
        self.skip_if_margin, self.skip_if_top = skip_if_margin, skip_if_top
        self.name = f"selective({scorer_name(scorer)}, k={k})"

    def _gate(self, candidates: list[Candidate]) -> str | None:
        if self.skip_if_margin is None and self.skip_if_top is None:
            return None
        retrieval = [c.retrieval_score for c in candidates]
        if any(r is None for r in retrieval):
            raise ConfigError("Selective's gate needs every candidate's retrieval_score; some have none")
        top = sorted((float(r) for r in retrieval if r is not None), reverse=True)
        if self.skip_if_top is not None and top and top[0] >= self.skip_if_top:
            return f"top retrieval score {top[0]:.4g} >= {self.skip_if_top}"
        if self.skip_if_margin is not None and len(top) >= 2 and top[0] - top[1] >= self.skip_if_margin:
            return f"retrieval margin {top[0] - top[1]:.4g} >= {self.skip_if_margin}"
        return None

    def _skipped(self, candidates: list[Candidate], reason: str) -> ScoreResult:
        logger.info("%s: reranking skipped (%s)", self.name, reason)
        n = len(candidates)
        return ScoreResult(
            values=[0.0] * n, info={"skipped": reason}, order=list(range(n)), unscored=frozenset(range(n))
        )

    def _merge(self, head: ScoreResult, n: int) -> ScoreResult:
        k = len(head.values)
        head_order = (
            list(head.order) if head.order is not None else sorted(range(k), key=lambda i: -head.values[i])
        )
        floor = min(head.values) if head.values else 0.0
        values = list(head.values) + [floor] * (n - k)
        per_item = None
        if head.per_item is not None:
            per_item = list(head.per_item) + [{} for _ in range(n - k)]
        tail = list(range(k, n)) if self.rest == "keep" else []
        return ScoreResult(
            values=values,
            info={**head.info, "reranked_head": k, "rest": self.rest},
            per_item=per_item,
            order=head_order + tail,
            unscored=frozenset(tail),
        )

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        reason = self._gate(candidates)
        if reason is not None:
            return self._skipped(candidates, reason)
        return self._merge(score_with(self.scorer, query, candidates[: self.k]), len(candidates))

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        reason = self._gate(candidates)
        if reason is not None:
            return self._skipped(candidates, reason)
        return self._merge(await ascore_with(self.scorer, query, candidates[: self.k]), len(candidates))
