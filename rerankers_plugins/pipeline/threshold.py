"""Threshold: keep candidates by absolute score, by distance from the best, with a floor on how many."""

from __future__ import annotations

from rerankers_plugins._validate import as_int, as_real, check_threshold
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy, require_scores
from rerankers_plugins.pipeline.ranking import Entry, Ranking, Strategy

__all__ = ["Threshold"]


class Threshold(Strategy):
    """Keep the candidates ``scorer`` scores at least ``absolute`` and within ``relative`` of the best.

    ``absolute`` is checked against the scorer's declared scale (a probability threshold of 0.7
    means the same for every PROBABILITY scorer); ``relative`` is a margin on that scale
    (``best - relative``); ``min_keep`` keeps at least that many (the best ones) even if all fall
    below. Entries the inner layers did not rerank (Selective's tail, a fallback) are never cut.
    Every cut is marked (``dropped_by``). Rank-only scorers are refused.
    """

    def __init__(
        self,
        scorer: ScorerLike,
        *,
        absolute: float | None = None,
        relative: float | None = None,
        min_keep: int = 0,
    ) -> None:
        self.inner = as_strategy(scorer)
        self.scale = require_scores(self.inner, "Threshold")
        self.absolute = check_threshold(self.scale, absolute, who=f"scorer {self.inner.name!r}")
        self.relative = as_real(relative, "relative", allow_none=True)
        if self.relative is not None and self.relative < 0:
            raise ConfigError(f"relative must be a margin >= 0 below the best score, got {relative!r}")
        self.min_keep = as_int(min_keep, "min_keep", minimum=0) or 0
        self.name = self.inner.name
        self.label = (
            f"Threshold(absolute={self.absolute}, relative={self.relative}, min_keep={self.min_keep})"
        )

    def _cut(self, ranking: Ranking) -> Ranking:
        scores = [e.score for e in ranking if e.reranked]
        best = max(scores) if scores else 0.0
        reasons: dict[int, str] = {}

        def passes(e: Entry) -> bool:
            if not e.reranked:
                return True
            if self.absolute is not None and e.score < self.absolute:
                reasons[e.position] = f"score {e.score:.6g} < absolute {self.absolute}"
                return False
            if self.relative is not None and e.score < best - self.relative:
                reasons[e.position] = (
                    f"score {e.score:.6g} more than {self.relative} below the best {best:.6g}"
                )
                return False
            return True

        keep = {e.position for e in ranking if passes(e)}
        for e in ranking:  # min_keep: the best of the rest, in the ranking's order
            if len(keep) >= self.min_keep:
                break
            keep.add(e.position)
        return ranking.then(
            [e for e in ranking if e.position in keep],
            by=self.label,
            reasons=reasons,
            info={
                "threshold": {"absolute": self.absolute, "relative": self.relative, "min_keep": self.min_keep}
            },
        )

    def children(self) -> tuple[Strategy, ...]:
        return (self.inner,)

    def run(self, query: str, ranking: Ranking) -> Ranking:
        return self._cut(self.inner.run(query, ranking))

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        return self._cut(await self.inner.arun(query, ranking))
