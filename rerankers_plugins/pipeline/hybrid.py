"""Hybrid fusion: reranker scores, BM25, the retrieval score and metadata, in one ranking."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.fusion import minmax, rrf, weighted_sum, zscore
from rerankers_plugins.pipeline._strategy import Strategy, require_scores
from rerankers_plugins.pipeline.rerank import ascore_with, score_with, scorer_name
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate, ScoreScale

__all__ = ["Hybrid", "Signal"]

logger = logging.getLogger(__name__)

RETRIEVAL = "retrieval"


@dataclass(frozen=True)
class Signal:
    """One input of a :class:`Hybrid`: ``source`` is a scorer, the string ``"retrieval"`` (the
    candidates' first-stage ``retrieval_score``), or a function ``fn(Candidate) -> float`` (metadata
    such as recency or source trust)."""

    source: Any
    weight: float
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.source, str):
            return self.source
        if _is_scorer(self.source):
            return scorer_name(self.source)
        return getattr(self.source, "__name__", "metadata")


def _is_scorer(obj: Any) -> bool:
    return any(
        hasattr(obj, m) for m in ("score", "score_details", "score_candidates", "rank", "rank_details")
    )


class Hybrid(Strategy):
    """Fuse several signals into one score.

    ``method="weighted"`` normalises each signal per query (``normalize="minmax"`` to 0..1, scale
    RELEVANCE; or ``"zscore"``, scale LOGIT) and sums them with the weights. ``method="rrf"`` sums
    ``weight / (rrf_k + rank)`` (scale LOGIT). Weights must be >= 0 and not all 0; weights that do
    not sum to 1 are normalised to do so (logged once), so ``[3, 1, 1]`` means ``[0.6, 0.2, 0.2]``.
    Ties keep the input order. ``details["signals"]`` holds each signal's raw value.

        Hybrid([Signal(CrossEncoderScorer(...), 0.6), Signal(BM25Scorer(), 0.2),
                Signal(lambda c: c.metadata["trust"], 0.2, name="trust")])
    """

    def __init__(
        self,
        signals: list[Signal],
        *,
        method: Literal["weighted", "rrf"] = "weighted",
        normalize: Literal["minmax", "zscore"] = "minmax",
        rrf_k: float = 60.0,
    ) -> None:
        if not signals:
            raise ConfigError("Hybrid needs at least one Signal")
        if method not in ("weighted", "rrf"):
            raise ConfigError(f"method must be 'weighted' or 'rrf', got {method!r}")
        if normalize not in ("minmax", "zscore"):
            raise ConfigError(f"normalize must be 'minmax' or 'zscore', got {normalize!r}")
        labels = [s.label for s in signals]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"Hybrid signal names must be unique (pass Signal(name=...)): {labels}")
        weights = []
        for s in signals:
            if not isinstance(s, Signal):
                raise ConfigError(f"Hybrid takes Signal objects, got {type(s).__name__}")
            w = s.weight
            if isinstance(w, bool) or not isinstance(w, int | float) or math.isnan(w) or w < 0:
                raise ConfigError(f"signal {s.label!r}: weight must be a number >= 0, got {w!r}")
            if isinstance(s.source, str) and s.source != RETRIEVAL:
                raise ConfigError(
                    f"signal {s.label!r}: the only string source is 'retrieval', got {s.source!r}"
                )
            if not isinstance(s.source, str) and not _is_scorer(s.source) and not callable(s.source):
                raise ConfigError(
                    f"signal {s.label!r}: source must be a scorer, 'retrieval' or a function of a Candidate"
                )
            if _is_scorer(s.source) and method == "weighted":
                require_scores(s.source, "weighted fusion")
            weights.append(float(w))
        total = sum(weights)
        if total <= 0:
            raise ConfigError("Hybrid weights are all 0")
        if abs(total - 1.0) > 1e-9:
            logger.info("Hybrid weights %s sum to %g; normalised to sum to 1", weights, total)
        self.signals = list(signals)
        self.weights = [w / total for w in weights]
        self.method, self.normalize, self.rrf_k = method, normalize, rrf_k
        self.scale = (
            ScoreScale.RELEVANCE if method == "weighted" and normalize == "minmax" else ScoreScale.LOGIT
        )
        self.name = (
            "hybrid(" + ", ".join(f"{lbl}={w:.2f}" for lbl, w in zip(labels, self.weights, strict=True)) + ")"
        )

    def _direct(self, signal: Signal, candidates: list[Candidate]) -> list[float]:
        values = []
        for c in candidates:
            if signal.source == RETRIEVAL:
                if c.retrieval_score is None:
                    raise ConfigError(f"signal 'retrieval': candidate {c.id!r} has no retrieval_score")
                values.append(float(c.retrieval_score))
                continue
            fn: Callable[[Candidate], Any] = signal.source
            try:
                v = float(fn(c))
            except Exception as exc:
                raise ConfigError(
                    f"metadata signal {signal.label!r} failed on candidate {c.id!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if not math.isfinite(v):
                raise ConfigError(f"metadata signal {signal.label!r} gave {v} for candidate {c.id!r}")
            values.append(v)
        return values

    def _fuse(self, raw: list[list[float]], n: int) -> ScoreResult:
        if self.method == "rrf":
            fused = rrf(raw, self.weights, k=self.rrf_k)
            normed = raw
        else:
            norm = minmax if self.normalize == "minmax" else zscore
            normed = [norm(v) for v in raw]
            fused = weighted_sum(normed, self.weights)
        labels = [s.label for s in self.signals]
        per = [
            {
                "signals": {lbl: raw[j][i] for j, lbl in enumerate(labels)},
                "normalized": {lbl: normed[j][i] for j, lbl in enumerate(labels)},
            }
            for i in range(n)
        ]
        return ScoreResult(values=fused, info={"fusion": self.method}, per_item=per)

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        raw = [
            list(score_with(s.source, query, candidates).values)
            if _is_scorer(s.source)
            else self._direct(s, candidates)
            for s in self.signals
        ]
        return self._fuse(raw, len(candidates))

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        async def one(s: Signal) -> list[float]:
            if _is_scorer(s.source):
                return list((await ascore_with(s.source, query, candidates)).values)
            return self._direct(s, candidates)

        raw = list(await asyncio.gather(*(one(s) for s in self.signals)))
        return self._fuse(raw, len(candidates))
