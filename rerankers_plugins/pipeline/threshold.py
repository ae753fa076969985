"""Threshold: keep candidates by absolute score, by distance from the best, with a floor on how many."""

from __future__ import annotations

import logging
import math
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline._strategy import Strategy, require_scores
from rerankers_plugins.pipeline.rerank import ascore_with, check_threshold, score_with, scorer_name
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate

__all__ = ["Threshold"]

logger = logging.getLogger(__name__)


class Threshold(Strategy):
    """Keep the candidates ``scorer`` scores at least ``absolute`` and within ``relative`` of the best.

    ``absolute`` is checked against the scorer's declared scale (a probability threshold of 0.7
    means the same for every PROBABILITY scorer); ``relative`` is a margin on that scale
    (``best - relative``); ``min_keep`` returns at least that many (the best ones) even if all fall
    below. Applied after scoring and before ``top_n``. Rank-only scorers are refused.
    """

    def __init__(
        self, scorer: Any, *, absolute: float | None = None, relative: float | None = None, min_keep: int = 0
    ) -> None:
        self.scorer = scorer
        self.scale = require_scores(scorer, "Threshold")
        check_threshold(self.scale, absolute, who=f"scorer {scorer_name(scorer)!r}")
        if relative is not None and (
            not isinstance(relative, int | float) or math.isnan(relative) or relative < 0
        ):
            raise ConfigError(f"relative must be a margin >= 0 below the best score, got {relative!r}")
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
            raise ConfigError(f"min_keep must be an int >= 0, got {min_keep!r}")
        self.absolute, self.relative, self.min_keep = absolute, relative, min_keep
        self.name = scorer_name(scorer)

    def _cut(self, result: ScoreResult) -> ScoreResult:
        scores = result.values
        order = sorted(range(len(scores)), key=lambda k: -scores[k])
        best = scores[order[0]] if order else 0.0
        kept = [
            k
            for k in order
            if (self.absolute is None or scores[k] >= self.absolute)
            and (self.relative is None or scores[k] >= best - self.relative)
        ]
        if len(kept) < self.min_keep:
            kept = order[: self.min_keep]
        if len(kept) < len(order):
            logger.debug("Threshold(%s): kept %d of %d", self.name, len(kept), len(order))
        info = {
            **result.info,
            "threshold": {"absolute": self.absolute, "relative": self.relative, "min_keep": self.min_keep},
        }
        return ScoreResult(values=scores, info=info, per_item=result.per_item, order=kept)

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        return self._cut(score_with(self.scorer, query, candidates))

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        return self._cut(await ascore_with(self.scorer, query, candidates))
