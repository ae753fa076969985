"""Hybrid fusion: reranker scores, BM25, the retrieval score and metadata, in one ranking."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rerankers_plugins._validate import as_real
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.fusion import minmax, rrf, weighted_sum, zscore
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy, require_scores
from rerankers_plugins.pipeline.ranking import Entry, Ranking, Strategy, candidate_label
from rerankers_plugins.scorers._aio import gather_cancelling
from rerankers_plugins.scorers.base import Ranks, Scores
from rerankers_plugins.types import Candidate, ScoreScale

__all__ = ["Hybrid", "Signal", "retrieval_values"]

logger = logging.getLogger(__name__)

RETRIEVAL = "retrieval"

SignalSource = ScorerLike | Literal["retrieval"] | Callable[[Candidate], float]


@dataclass(frozen=True)
class Signal:
    """One input of a :class:`Hybrid`: ``source`` is a scorer, ranker or strategy; the string
    ``"retrieval"`` (the candidates' first-stage ``retrieval_score``, or where none has one the
    first stage's order: the i-th candidate gets -i); or a function
    ``fn(Candidate) -> float`` (metadata such as recency or source trust)."""

    source: SignalSource
    weight: float
    name: str | None = None
    strategy: Strategy | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        strategy = as_strategy(self.source) if isinstance(self.source, Strategy | Scores | Ranks) else None
        object.__setattr__(self, "strategy", strategy)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.strategy is not None:
            return self.strategy.name
        if isinstance(self.source, str):
            return self.source
        return str(getattr(self.source, "__name__", "metadata"))


def retrieval_values(candidates: Sequence[Candidate], positions: Sequence[int]) -> list[float]:
    """The ``"retrieval"`` signal of ``candidates`` (at ``positions`` of the first stage's list):
    their ``retrieval_score``; where none has one (FAISS and in-memory vector stores put none in
    metadata), the first stage's order: the candidate it ranked i-th gets -i. ConfigError when only
    some have one."""
    scores = [c.retrieval_score for c in candidates]
    if all(s is None for s in scores):
        logger.debug("signal 'retrieval': no candidate has a retrieval_score; using the first-stage rank")
        return [-float(p) for p in positions]
    missing = [
        candidate_label(c, p) for c, p, s in zip(candidates, positions, scores, strict=True) if s is None
    ]
    if missing:
        raise ConfigError(
            f"signal 'retrieval': candidates {', '.join(missing[:5])} have no retrieval_score while others do "
            "(LangChain: set the adapter's retrieval_score_key to the key your retriever writes)"
        )
    return [float(s) for s in scores if s is not None]  # finite: Candidate refuses NaN and inf


def _fill(values: list[float | None], normed: list[float], low: float) -> list[float]:
    """Normalised values back in place; a missing one (not reranked by its signal) gets ``low``."""
    it = iter(normed)
    return [low if v is None else next(it) for v in values]


def _check_signals(signals: Sequence[Signal], method: str, normalize: str) -> list[str]:
    """The signals' labels; ConfigError for no signal, an unknown method or normalisation, a
    non-Signal, or two signals with one label."""
    if not signals:
        raise ConfigError("Hybrid needs at least one Signal")
    if method not in ("weighted", "rrf"):
        raise ConfigError(f"method must be 'weighted' or 'rrf', got {method!r}")
    if normalize not in ("minmax", "zscore"):
        raise ConfigError(f"normalize must be 'minmax' or 'zscore', got {normalize!r}")
    for s in signals:
        if not isinstance(s, Signal):
            raise ConfigError(f"Hybrid takes Signal objects, got {type(s).__name__}")
    labels = [s.label for s in signals]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Hybrid signal names must be unique (pass Signal(name=...)): {labels}")
    return labels


def _weight(s: Signal, method: str) -> float:
    """``s``'s weight, after checking it (finite, >= 0) and its source."""
    value = as_real(s.weight, f"signal {s.label!r}: weight")
    if value is None or not 0 <= value < math.inf:
        raise ConfigError(f"signal {s.label!r}: weight must be a finite number >= 0, got {s.weight!r}")
    _check_source(s, method)
    return value


def _check_source(s: Signal, method: str) -> None:
    """ConfigError unless ``s``'s source is a model (which needs scores for weighted fusion),
    ``"retrieval"`` or a function of a Candidate."""
    if s.strategy is None and isinstance(s.source, str) and s.source != RETRIEVAL:
        raise ConfigError(f"signal {s.label!r}: the only string source is 'retrieval', got {s.source!r}")
    if s.strategy is None and not isinstance(s.source, str) and not callable(s.source):
        raise ConfigError(
            f"signal {s.label!r}: source must be a scorer, 'retrieval' or a function of a Candidate"
        )
    if s.strategy is not None and method == "weighted":
        require_scores(s.strategy, "weighted fusion")


def _normalised(labels: list[str], weights: list[float]) -> list[float]:
    """``weights`` scaled to sum to 1 (logged when they did not); ConfigError when all are 0 or
    their sum overflows."""
    total = sum(weights)
    if total <= 0:
        raise ConfigError("Hybrid weights are all 0")
    named = dict(zip(labels, weights, strict=True))
    if not math.isfinite(total):
        raise ConfigError(
            f"Hybrid weights {named} sum to {total}, which overflows: only their ratios matter, "
            "so pass smaller numbers (e.g. [1, 1] for [1e308, 1e308])"
        )
    normalised = [w / total for w in weights]
    if not all(math.isfinite(w) for w in normalised) or not any(normalised):
        raise ConfigError(f"Hybrid weights {named} cannot be normalised to sum to 1 (got {normalised})")
    if abs(total - 1.0) > 1e-9:
        logger.info("Hybrid weights %s sum to %g; normalised to sum to 1", weights, total)
    return normalised


def _rrf_k(rrf_k: float) -> float:
    k = as_real(rrf_k, "rrf_k")
    if k is None or not 0 <= k < math.inf:
        raise ConfigError(f"rrf_k must be a finite number >= 0 (60 is usual), got {rrf_k!r}")
    return k


def _survivors(ranking: Ranking, outs: list[Ranking | None]) -> tuple[list[Entry], dict[int, Entry]]:
    """The entries every strategy signal kept (in ``ranking``'s order), and those any dropped (the
    first signal's drop of each)."""
    kept = {e.position for e in ranking}
    dropped: dict[int, Entry] = {}
    for out in outs:
        if out is not None:
            kept &= {e.position for e in out}
            for e in out.dropped:
                dropped.setdefault(e.position, e)
    return [e for e in ranking if e.position in kept], dropped


class Hybrid(Strategy):
    """Fuse several signals into one score.

    ``method="weighted"`` normalises each signal per query (``normalize="minmax"`` to 0..1, scale
    RELEVANCE; or ``"zscore"``, scale LOGIT) and sums them with the weights. ``method="rrf"`` sums
    ``weight / (rrf_k + rank)`` (scale LOGIT). Weights must be finite, >= 0 and not all 0, with a
    finite sum; weights that do not sum to 1 are normalised to do so (logged once), so ``[3, 1, 1]``
    means ``[0.6, 0.2, 0.2]``. Weights whose sum overflows (``[1e308, 1e308]``) are refused.
    Ties keep the input order. ``details["signals"]`` holds each signal's raw value.

    A signal that is a strategy may drop candidates: they stay dropped (marked by that signal).
    A candidate a strategy signal did not rerank (Selective's tail, a fallback) has no value for
    it: that signal counts as its lowest normalised value (minmax 0, the lowest z-score, the last
    RRF rank), ``details["signals"]`` shows None, and the candidate stays unreranked: it follows
    the reranked ones (by fused score) and no threshold cuts it.

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
        labels = _check_signals(signals, method, normalize)
        weights = [_weight(s, method) for s in signals]
        self.signals = list(signals)
        self.labels = labels
        self.weights = _normalised(labels, weights)
        self.method, self.normalize = method, normalize
        self.rrf_k = _rrf_k(rrf_k)
        self.scale = (
            ScoreScale.RELEVANCE if method == "weighted" and normalize == "minmax" else ScoreScale.LOGIT
        )
        self.name = (
            "hybrid(" + ", ".join(f"{lbl}={w:.2f}" for lbl, w in zip(labels, self.weights, strict=True)) + ")"
        )

    def _retrieval(self, entries: Sequence[Entry]) -> list[float | None]:
        return list(retrieval_values([e.candidate for e in entries], [e.position for e in entries]))

    def _direct(self, signal: Signal, entries: Sequence[Entry]) -> list[float | None]:
        if signal.source == RETRIEVAL:
            return self._retrieval(entries)
        values: list[float | None] = []
        for e in entries:
            c = e.candidate
            fn: Callable[[Candidate], Any] = signal.source  # type: ignore[assignment]
            try:
                v = float(fn(c))
            except Exception as exc:
                raise ConfigError(
                    f"metadata signal {signal.label!r} failed on candidate {e.label}: {type(exc).__name__}: {exc}"
                ) from exc
            if not math.isfinite(v):
                raise ConfigError(f"metadata signal {signal.label!r} gave {v} for candidate {e.label}")
            values.append(v)
        return values

    def _rrf(self, raw: list[list[float | None]]) -> tuple[list[float], list[list[float]]]:
        # a missing value ranks after every present one (rank = present + 1)
        filled = [[-math.inf if v is None else v for v in vals] for vals in raw]
        return rrf(filled, self.weights, k=self.rrf_k), [[math.nan] * len(v) for v in raw]

    def fuse_values(self, raw: list[list[float | None]]) -> tuple[list[float], list[list[float]]]:
        """The fused score of each candidate from every signal's raw values (``raw[signal][i]``,
        None where the signal did not rerank candidate ``i``), and each signal's normalised values
        (NaN under RRF). A pure function of ``raw`` and the settings: what :meth:`run` computes,
        and what ``tune`` replays from cached scores."""
        if self.method == "rrf":
            return self._rrf(raw)
        norm = minmax if self.normalize == "minmax" else zscore
        normed = []
        for vals in raw:
            present = norm([v for v in vals if v is not None])
            low = 0.0 if self.normalize == "minmax" else min(present, default=0.0)
            normed.append(_fill(vals, present, low))
        return weighted_sum(normed, self.weights), normed

    def _raw(self, entries: list[Entry], by_pos: list[dict[int, Entry] | None]) -> list[list[float | None]]:
        """Each signal's value per entry: a strategy's score where it reranked the entry (else
        None), the retrieval score or the metadata function's value otherwise."""
        raw: list[list[float | None]] = []
        for s, got in zip(self.signals, by_pos, strict=True):
            if got is None:
                raw.append(self._direct(s, entries))
            else:
                raw.append([got[e.position].score if got[e.position].reranked else None for e in entries])
        return raw

    def _fused(
        self,
        i: int,
        e: Entry,
        by_pos: list[dict[int, Entry] | None],
        raw: list[list[float | None]],
        normed: list[list[float]],
        fused: float,
    ) -> Entry:
        """Entry ``i`` with its fused score and every signal's details."""
        details: dict[str, Any] = dict(e.details)
        for got in by_pos:
            if got is not None:
                details.update(got[e.position].details)
        details["signals"] = {lbl: raw[j][i] for j, lbl in enumerate(self.labels)}
        if self.method != "rrf":
            details["normalized"] = {lbl: normed[j][i] for j, lbl in enumerate(self.labels)}
        entry = replace(e, details=details)
        # an entry a strategy signal did not rerank (a Selective tail, a fallback) stays unreranked:
        # its fused score is carried for the order, and no threshold cuts it
        unreranked = any(got is not None and not got[e.position].reranked for got in by_pos)
        return entry.passed(fused) if unreranked else entry.scored(fused)

    def _fuse(self, ranking: Ranking, outs: list[Ranking | None]) -> Ranking:
        entries, dropped = _survivors(ranking, outs)
        by_pos = [{e.position: e for e in out} if out is not None else None for out in outs]
        raw = self._raw(entries, by_pos)
        fused, normed = self.fuse_values(raw)
        result = [self._fused(i, e, by_pos, raw, normed, fused[i]) for i, e in enumerate(entries)]
        order = sorted(range(len(result)), key=lambda k: (not result[k].reranked, -result[k].score))
        info: dict[str, Any] = {"fusion": self.method}
        for out in outs:
            if out is not None:
                info.update(out.info)
        return ranking.then(
            [result[k] for k in order], by=self.name, dropped=dropped.values(), scale=self.scale, info=info
        )

    def children(self) -> tuple[Strategy, ...]:
        return tuple(s.strategy for s in self.signals if s.strategy is not None)

    def run(self, query: str, ranking: Ranking) -> Ranking:
        outs = [
            s.strategy.run(query, ranking.sub(ranking.entries)) if s.strategy is not None else None
            for s in self.signals
        ]
        return self._fuse(ranking, outs)

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        async def one(s: Signal) -> Ranking | None:
            if s.strategy is None:
                return None
            return await s.strategy.arun(query, ranking.sub(ranking.entries))

        return self._fuse(ranking, await gather_cancelling([one(s) for s in self.signals]))
