"""``rerank``: the one place that scores, sorts and cuts.

Every adapter and strategy ends here, so the guarantees hold everywhere:

* no candidate is dropped except by ``top_n`` or ``threshold`` (or ``skip_empty``, when asked for);
* no candidate is duplicated; ties keep their input order (the sort is stable);
* inputs are never mutated: the result holds new :class:`Scored` objects around the candidates;
* an empty candidate list returns ``[]`` without calling the scorer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate, Scored, ScoreScale

__all__ = [
    "arerank",
    "ascore_with",
    "check_options",
    "check_threshold",
    "rerank",
    "score_with",
    "scorer_name",
    "scorer_scale",
]

logger = logging.getLogger(__name__)

CandidateLike = Candidate | str


def scorer_name(scorer: Any) -> str:
    """The name a scorer reports in ``details`` and logs (its ``name``, else its class name)."""
    return str(getattr(scorer, "name", None) or type(scorer).__name__)


def scorer_scale(scorer: Any) -> ScoreScale:
    """The declared scale of a scorer; a ``Ranker`` without one is RANK_ONLY."""
    scale = getattr(scorer, "scale", None)
    if scale is None:
        if _is_ranker(scorer):
            return ScoreScale.RANK_ONLY
        raise ConfigError(f"scorer {scorer_name(scorer)!r} declares no `scale` (a ScoreScale)")
    return ScoreScale(scale)


def check_threshold(scale: ScoreScale, threshold: float | None, *, who: str = "scorer") -> None:
    """Raise ConfigError unless ``threshold`` is None or a number inside ``scale``'s range."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(f"threshold must be a number, got {type(threshold).__name__}")
    if math.isnan(threshold):
        raise ConfigError("threshold is NaN")
    bounds = scale.bounds
    if bounds is None:
        raise ConfigError(
            f"{who} has scale RANK_ONLY (an order, not scores): a threshold cannot apply; use top_n"
        )
    lo, hi = bounds
    if not (lo <= threshold <= hi) or math.isinf(threshold):
        raise ConfigError(f"threshold {threshold} is outside the {scale.value} scale of {who} ([{lo}, {hi}])")


def _check_top_n(top_n: int | None) -> None:
    if top_n is None:
        return
    if isinstance(top_n, bool) or not isinstance(top_n, int):
        raise ConfigError(f"top_n must be a positive int or None, got {top_n!r}")
    if top_n <= 0:
        raise ConfigError(f"top_n must be >= 1 (or None for all), got {top_n}")


def check_options(scorer: Any, top_n: int | None, threshold: float | None) -> None:
    """Validate ``top_n`` and ``threshold`` for ``scorer`` up front (adapters call this at construction)."""
    _check_top_n(top_n)
    check_threshold(scorer_scale(scorer), threshold, who=f"scorer {scorer_name(scorer)!r}")


def _as_candidates(candidates: Sequence[CandidateLike]) -> list[Candidate]:
    if isinstance(candidates, str | bytes):
        raise TypeError("candidates must be a sequence of Candidate or str, not a single string")
    out: list[Candidate] = []
    for i, c in enumerate(candidates):
        if isinstance(c, Candidate):
            out.append(c)
        elif isinstance(c, str):
            out.append(Candidate(text=c, id=str(i)))
        else:
            raise TypeError(f"candidate {i} must be a Candidate or a str, got {type(c).__name__} ({c!r:.60})")
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    query: str
    candidates: list[Candidate]
    scored_idx: list[int]  # indices into candidates that go to the scorer
    name: str
    scale: ScoreScale


def _plan(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: Any,
    top_n: int | None,
    threshold: float | None,
    skip_empty: bool,
) -> _Plan:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ConfigError("query is empty: a reranker needs a query to score candidates against")
    _check_top_n(top_n)
    name = scorer_name(scorer)
    scale = scorer_scale(scorer)
    check_threshold(scale, threshold, who=f"scorer {name!r}")
    cands = _as_candidates(candidates)
    idx = list(range(len(cands)))
    if skip_empty:
        idx = [i for i in idx if cands[i].text.strip()]
        skipped = len(cands) - len(idx)
        if skipped:
            logger.info("skip_empty: %d empty candidate(s) left out of the ranking", skipped)
    return _Plan(query, cands, idx, name, scale)


def _validate_scores(raw: Any, n: int, name: str) -> list[float]:
    try:
        scores = [float(s) for s in raw]
    except (TypeError, ValueError) as exc:
        raise BackendError(f"scorer {name!r} returned non-numeric scores: {exc}") from exc
    if len(scores) != n:
        raise BackendError(
            f"scorer {name!r} returned {len(scores)} scores for {n} texts; "
            "a scorer must return exactly one score per text, in input order"
        )
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise BackendError(f"scorer {name!r} returned non-finite scores (NaN or inf) at positions {bad[:10]}")
    return scores


def _permutation_scores(perm: Any, n: int, name: str) -> list[float]:
    order = [int(i) for i in perm]
    if sorted(order) != list(range(n)):
        raise BackendError(f"ranker {name!r} returned {order[:20]}..., not a permutation of range({n})")
    scores = [0.0] * n
    for pos, i in enumerate(order):
        scores[i] = float(n - pos)
    return scores


def _finish(
    plan: _Plan, scores: list[float], top_n: int | None, threshold: float | None, result: ScoreResult
) -> list[Scored]:
    if result.order is not None:  # a strategy decided the order (and may have left some out, logged)
        order = list(result.order)
    else:
        order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable: ties keep input order
    if threshold is not None:
        order = [k for k in order if k in result.unscored or scores[k] >= threshold]
    if top_n is not None:
        order = order[:top_n]
    out = []
    for rank, k in enumerate(order):
        i = plan.scored_idx[k]
        details = {
            **result.info,
            **(result.per_item[k] if result.per_item is not None else {}),
            "original_rank": i,
            "model": plan.name,
            "score": scores[k],
            "scale": plan.scale.value,
        }
        if k in result.unscored:
            details["reranked"] = False
        out.append(Scored(candidate=plan.candidates[i], score=scores[k], rank=rank, details=details))
    return out


def _is_ranker(scorer: Any) -> bool:
    return not any(hasattr(scorer, m) for m in ("score", "score_details", "score_candidates"))


def _as_result(raw: Any) -> ScoreResult:
    return raw if isinstance(raw, ScoreResult) else ScoreResult(values=list(raw))


_METHODS = ("score_candidates", "score_details", "score", "rank_details", "rank")


def _args(method: str, query: str, candidates: list[Candidate]) -> tuple[str, Any]:
    return (query, candidates) if method == "score_candidates" else (query, [c.text for c in candidates])


def _call(scorer: Any, query: str, candidates: list[Candidate]) -> ScoreResult:
    """One call of the scorer, through the richest method it has: ``score_candidates`` (strategies,
    which see ids, metadata and retrieval scores), ``*_details``, then the plain methods."""
    for method in _METHODS:
        if hasattr(scorer, method):
            return _as_result(getattr(scorer, method)(*_args(method, query, candidates)))
    raise ConfigError(f"{type(scorer).__name__} is neither a Scorer (score) nor a Ranker (rank)")


async def _acall(scorer: Any, query: str, candidates: list[Candidate]) -> ScoreResult:
    """Async :func:`_call`: native ``a*`` methods first, else the sync method in a worker thread."""
    for method in _METHODS:
        if hasattr(scorer, "a" + method):
            return _as_result(await getattr(scorer, "a" + method)(*_args(method, query, candidates)))
        if hasattr(scorer, method):
            return _as_result(
                await asyncio.to_thread(getattr(scorer, method), *_args(method, query, candidates))
            )
    raise ConfigError(f"{type(scorer).__name__} is neither a Scorer (score) nor a Ranker (rank)")


def _scores(scorer: Any, result: ScoreResult, n: int, name: str) -> list[float]:
    if result.per_item is not None and len(result.per_item) != n:
        raise BackendError(f"scorer {name!r} returned {len(result.per_item)} detail entries for {n} texts")
    order = result.order
    if order is not None and (len(set(order)) != len(order) or any(not 0 <= k < n for k in order)):
        raise BackendError(f"scorer {name!r} returned an order that is not a subset of range({n})")
    if _is_ranker(scorer):
        return _permutation_scores(result.values, n, name)
    return _validate_scores(result.values, n, name)


def score_with(scorer: Any, query: str, candidates: list[Candidate]) -> ScoreResult:
    """Call any scorer, ranker or strategy on ``candidates``; ``values`` are checked float scores
    (a ranker's permutation becomes ``n - position``). Strategies use this to call what they wrap."""
    result = _call(scorer, query, candidates)
    return replace(result, values=_scores(scorer, result, len(candidates), scorer_name(scorer)))


async def ascore_with(scorer: Any, query: str, candidates: list[Candidate]) -> ScoreResult:
    """Async :func:`score_with`."""
    result = await _acall(scorer, query, candidates)
    return replace(result, values=_scores(scorer, result, len(candidates), scorer_name(scorer)))


def _keep_order(plan: _Plan, exc: Exception, top_n: int | None) -> list[Scored]:
    """The documented fallback of scorers with ``on_error="keep_order"``: every candidate, in its
    original order (cut by ``top_n``; no threshold, as there are no scores), marked in details.
    The score is the candidate's retrieval score where it has one, else 0.0."""
    logger.warning(
        "scorer %r failed (%s); on_error='keep_order': returning %d candidates in their original order",
        plan.name,
        exc,
        len(plan.scored_idx),
    )
    idx = plan.scored_idx if top_n is None else plan.scored_idx[:top_n]
    out = []
    for rank, i in enumerate(idx):
        c = plan.candidates[i]
        score = float(c.retrieval_score) if c.retrieval_score is not None else 0.0
        details = {
            "original_rank": i,
            "model": plan.name,
            "score": score,
            "scale": plan.scale.value,
            "fallback": "keep_order",
            "error": f"{type(exc).__name__}: {exc}",
        }
        out.append(Scored(candidate=c, score=score, rank=rank, details=details))
    return out


def rerank(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: Any,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> list[Scored]:
    """Score ``candidates`` against ``query`` with ``scorer`` and return them best first.

    ``candidates`` are :class:`Candidate` objects or plain strings (given ids ``"0"``, ``"1"``, ...).
    ``threshold`` keeps scores ``>=`` it and must lie on the scorer's declared scale; ``top_n`` keeps
    the best ``n`` after the threshold. Empty or whitespace-only texts are scored like any other
    unless ``skip_empty=True``, which leaves them out (logged).

        >>> from rerankers_plugins import FakeScorer
        >>> [s.text for s in rerank("red apple", ["banana", "red apple pie", "apple"], FakeScorer())]
        ['red apple pie', 'apple', 'banana']
        >>> [s.text for s in rerank("red apple", ["banana", "red apple pie", "apple"], FakeScorer(),
        ...                         threshold=0.5)]
        ['red apple pie', 'apple']
    """
    plan = _plan(query, candidates, scorer, top_n, threshold, skip_empty)
    if not plan.scored_idx:
        return []
    cands = [plan.candidates[i] for i in plan.scored_idx]
    try:
        result = _call(scorer, plan.query, cands)
    except BackendError as exc:
        if getattr(scorer, "on_error", "raise") != "keep_order":
            raise
        return _keep_order(plan, exc, top_n)
    return _finish(plan, _scores(scorer, result, len(cands), plan.name), top_n, threshold, result)


async def arerank(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: Any,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> list[Scored]:
    """Async :func:`rerank`: uses the scorer's ``ascore``/``arank`` where it has one, else runs the
    sync method in a worker thread, so the event loop is never blocked by model compute."""
    plan = _plan(query, candidates, scorer, top_n, threshold, skip_empty)
    if not plan.scored_idx:
        return []
    cands = [plan.candidates[i] for i in plan.scored_idx]
    try:
        result = await _acall(scorer, plan.query, cands)
    except BackendError as exc:
        if getattr(scorer, "on_error", "raise") != "keep_order":
            raise
        return _keep_order(plan, exc, top_n)
    return _finish(plan, _scores(scorer, result, len(cands), plan.name), top_n, threshold, result)
