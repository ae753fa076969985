"""Multi-stage cascade: a cheap scorer on many candidates, a costly one on the survivors."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline._strategy import Strategy
from rerankers_plugins.pipeline.rerank import (
    ascore_with,
    check_threshold,
    score_with,
    scorer_name,
    scorer_scale,
)
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate

__all__ = ["Cascade", "Stage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One cascade stage: ``scorer`` ranks what it receives and passes on its best ``keep``
    (None: all) that also score at least ``threshold`` (on the stage scorer's scale)."""

    scorer: Any
    keep: int | None = None
    threshold: float | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or scorer_name(self.scorer)


class Cascade(Strategy):
    """``Cascade([Stage(BiEncoderScorer(...), keep=50), Stage(CrossEncoderScorer(...), keep=10)])``.

    Each stage scores only the candidates the previous one kept. The result is the last stage's
    ranking of what reached it; the others are dropped by their stage's ``keep`` / ``threshold``.
    ``details["stages"]`` holds every stage's score of the candidate, ``details["stage_reached"]``
    the last stage it reached, and ``details["stage_ms"]`` each stage's latency for the query. The
    cascade's scale (for a final threshold) is the last stage's.
    """

    def __init__(self, stages: list[Stage]) -> None:
        if not stages:
            raise ConfigError("Cascade needs at least one Stage")
        labels = [s.label for s in stages]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"Cascade stage names must be unique (pass Stage(name=...)): {labels}")
        receives: int | None = None
        for i, stage in enumerate(stages, start=1):
            if not isinstance(stage, Stage):
                raise ConfigError(f"Cascade stage {i} must be a Stage, got {type(stage).__name__}")
            if stage.keep is not None and (
                isinstance(stage.keep, bool) or not isinstance(stage.keep, int) or stage.keep < 1
            ):
                raise ConfigError(
                    f"stage {i} ({stage.label}): keep must be a positive int or None, got {stage.keep!r}"
                )
            if stage.keep is not None and receives is not None and stage.keep > receives:
                raise ConfigError(
                    f"stage {i} ({stage.label}) keeps {stage.keep} but receives at most {receives} from the stage before"
                )
            check_threshold(scorer_scale(stage.scorer), stage.threshold, who=f"stage {i} ({stage.label})")
            receives = stage.keep if stage.keep is not None else receives
        self.stages = list(stages)
        self.scale = scorer_scale(stages[-1].scorer)
        self.name = " > ".join(labels)

    def _step(
        self,
        stage: Stage,
        alive: list[int],
        result: ScoreResult,
        per: list[dict[str, Any]],
        final: list[float],
    ) -> list[int]:
        scores = result.values
        local = (
            list(result.order)
            if result.order is not None
            else sorted(range(len(alive)), key=lambda k: -scores[k])
        )
        for k, i in enumerate(alive):
            per[i]["stages"][stage.label] = scores[k]
            per[i]["stage_reached"] = stage.label
            final[i] = scores[k]
        if stage.threshold is not None:
            local = [k for k in local if scores[k] >= stage.threshold]
        if stage.keep is not None:
            local = local[: stage.keep]
        return [alive[k] for k in local]

    def _start(self, n: int) -> tuple[list[int], list[dict[str, Any]], list[float], dict[str, float]]:
        return list(range(n)), [{"stages": {}} for _ in range(n)], [0.0] * n, {}

    def _result(
        self, alive: list[int], per: list[dict[str, Any]], final: list[float], ms: dict[str, float]
    ) -> ScoreResult:
        sizes = {label: round(v, 2) for label, v in ms.items()}
        return ScoreResult(values=final, info={"stage_ms": sizes}, per_item=per, order=alive)

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        alive, per, final, ms = self._start(len(candidates))
        for stage in self.stages:
            if not alive:
                break
            t0 = time.perf_counter()
            result = score_with(stage.scorer, query, [candidates[i] for i in alive])
            ms[stage.label] = (time.perf_counter() - t0) * 1000
            alive = self._step(stage, alive, result, per, final)
        return self._result(alive, per, final, ms)

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        alive, per, final, ms = self._start(len(candidates))
        for stage in self.stages:
            if not alive:
                break
            t0 = time.perf_counter()
            result = await ascore_with(stage.scorer, query, [candidates[i] for i in alive])
            ms[stage.label] = (time.perf_counter() - t0) * 1000
            alive = self._step(stage, alive, result, per, final)
        return self._result(alive, per, final, ms)
