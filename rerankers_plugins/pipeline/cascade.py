"""Multi-stage cascade: a cheap scorer on many candidates, a costly one on the survivors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rerankers_plugins._validate import as_int, check_threshold
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy
from rerankers_plugins.pipeline.ranking import Entry, Ranking, Strategy

__all__ = ["Cascade", "Stage"]


@dataclass(frozen=True)
class Stage:
    """One cascade stage: ``scorer`` (a scorer, ranker or strategy) ranks what it receives and
    passes on its best ``keep`` (None: all) that also score at least ``threshold`` (on the stage's
    scale; entries the stage did not rerank are never cut by it)."""

    scorer: ScorerLike
    keep: int | None = None
    threshold: float | None = None
    name: str | None = None
    strategy: Strategy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", as_strategy(self.scorer))

    @property
    def label(self) -> str:
        return self.name or self.strategy.name


def _check_stages(stages: list[Stage]) -> list[str]:
    """The stages' labels; ConfigError for no stage, a non-Stage or two stages with one label."""
    if not stages:
        raise ConfigError("Cascade needs at least one Stage")
    for i, stage in enumerate(stages, start=1):
        if not isinstance(stage, Stage):
            raise ConfigError(f"Cascade stage {i} must be a Stage, got {type(stage).__name__}")
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Cascade stage names must be unique (pass Stage(name=...)): {labels}")
    return labels


def _below(
    entries: list[Entry], threshold: float, reasons: dict[int, str]
) -> tuple[list[Entry], list[Entry]]:
    """``entries`` split into those a stage threshold keeps and those it cuts (reranked ones scoring
    below it), the reason of each cut written into ``reasons``."""
    for e in entries:
        if e.reranked and e.score < threshold:
            reasons[e.position] = f"score {e.score:.6g} < stage threshold {threshold}"
    return [e for e in entries if e.position not in reasons], [e for e in entries if e.position in reasons]


def _stage_by(label: str) -> str:
    """Who a cascade stage's drops say dropped them."""
    return f"cascade stage {label!r}"


def _dropped_by_a_stage(e: Entry) -> bool:
    return e.dropped_by is not None and e.dropped_by.startswith("cascade stage ")


class Cascade(Strategy):
    """``Cascade([Stage(BiEncoderScorer(...), keep=50), Stage(CrossEncoderScorer(...), keep=10)])``.

    Each stage ranks only what the previous one kept. The result is the last stage's ranking of
    what reached it; everything else is marked dropped by its stage (``keep`` / ``threshold``).
    ``details["stages"]`` holds every stage's score of the candidate, ``details["stage_reached"]``
    the last stage it reached, and ``details["stage_ms"]`` each stage's latency for the query. The
    cascade's scale (for a final threshold) is the last stage's. A candidate a stage cuts (or a
    layer inside it drops) shows that stage's score, entry in ``stages`` and scale, and
    ``stage_reached`` names it (inside a nested cascade, the inner stage that dropped it).
    """

    def __init__(self, stages: list[Stage]) -> None:
        labels = _check_stages(stages)
        receives: int | None = None
        self.keeps: list[int | None] = []
        self.thresholds: list[float | None] = []
        for i, stage in enumerate(stages, start=1):
            who = f"stage {i} ({stage.label})"
            keep = as_int(stage.keep, f"{who}: keep", minimum=1, allow_none=True)
            if keep is not None and receives is not None and keep > receives:
                raise ConfigError(f"{who} keeps {keep} but receives at most {receives} from the stage before")
            self.keeps.append(keep)
            self.thresholds.append(check_threshold(stage.strategy.scale, stage.threshold, who=who))
            receives = keep if keep is not None else receives
        self.stages = list(stages)
        self.scale = stages[-1].strategy.scale
        self.name = " > ".join(labels)

    def _step(self, i: int, alive: Ranking, out: Ranking) -> Ranking:
        """``alive`` after stage ``i`` returned ``out`` from it: every entry (kept, cut here, or
        dropped inside the stage) records this stage's score and that it reached this stage."""
        stage, keep, threshold = self.stages[i], self.keeps[i], self.thresholds[i]
        label = stage.label

        def note(e: Entry) -> Entry:
            stages = {**e.details.get("stages", {}), label: e.score if e.reranked else None}
            return e.noted({"stages": stages, "stage_reached": label})

        def note_dropped(e: Entry) -> Entry:
            # dropped by a stage of a cascade nested in this stage: that inner stage is where it
            # stopped (told by who dropped it, not by the label, which an inner cascade may share)
            inner = e.details.get("stage_reached")
            noted = note(e)
            return noted.noted({"stage_reached": inner}) if _dropped_by_a_stage(e) else noted

        entries = [note(e) for e in out]
        cut: list[Entry] = []
        reasons: dict[int, str] = {}
        if threshold is not None:
            entries, cut = _below(entries, threshold, reasons)
        if keep is not None:
            reasons.update({e.position: f"beyond keep={keep}" for e in entries[keep:]})
            cut += entries[keep:]
            entries = entries[:keep]
        return alive.then(
            entries,
            by=_stage_by(label),
            dropped=[note_dropped(e) for e in out.dropped],
            cut=cut,
            reasons=reasons,
            scale=stage.strategy.scale,
            info=out.info,
        )

    def children(self) -> tuple[Strategy, ...]:
        return tuple(stage.strategy for stage in self.stages)

    def run(self, query: str, ranking: Ranking) -> Ranking:
        ms: dict[str, float] = {}
        for i, stage in enumerate(self.stages):
            if not ranking.entries:
                break
            t0 = time.perf_counter()
            out = stage.strategy.run(query, ranking.sub(ranking.entries))
            ms[stage.label] = round((time.perf_counter() - t0) * 1000, 2)
            ranking = self._step(i, ranking, out)
        return ranking.then(ranking.entries, by=self.name, scale=self.scale, info={"stage_ms": ms})

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        ms: dict[str, float] = {}
        for i, stage in enumerate(self.stages):
            if not ranking.entries:
                break
            t0 = time.perf_counter()
            out = await stage.strategy.arun(query, ranking.sub(ranking.entries))
            ms[stage.label] = round((time.perf_counter() - t0) * 1000, 2)
            ranking = self._step(i, ranking, out)
        return ranking.then(ranking.entries, by=self.name, scale=self.scale, info={"stage_ms": ms})
