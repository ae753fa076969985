"""``rerank``: the one place that turns a ranking into the result (threshold, then ``top_n``).

Every adapter and strategy ends here, so the guarantees hold everywhere:

* no candidate is dropped except by ``top_n``, ``threshold``, ``skip_empty`` or a strategy's
  marked drop (see :func:`explain` for who dropped what, and why);
* no candidate is duplicated; ties keep their input order (every sort is stable);
* inputs are never mutated: the result holds new :class:`Scored` objects around the candidates;
* entries that were not reranked (Selective's tail, a ``keep_order`` fallback) are exempt from
  the threshold;
* an empty candidate list returns ``[]`` without calling the scorer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerankers_plugins._validate import check_threshold, check_top_n
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy
from rerankers_plugins.pipeline.ranking import Entry, Ranking, Strategy
from rerankers_plugins.scorers.limits import Usage, collect_usage
from rerankers_plugins.types import Candidate, Scored

__all__ = [
    "Explained",
    "RerankOptions",
    "aexplain",
    "arerank",
    "arerank_with",
    "check_options",
    "explain",
    "rerank",
    "rerank_with",
]

logger = logging.getLogger(__name__)

CandidateLike = Candidate | str


@dataclass(frozen=True, slots=True)
class RerankOptions:
    """What :func:`rerank`, :func:`arerank`, :func:`explain` and :func:`aexplain` are asked for,
    validated once, when it is built: ``scorer`` wrapped as a strategy (``strategy``), ``top_n`` an
    int >= 1 or None, ``threshold`` None or a number on the strategy's scale (ConfigError
    otherwise), and ``skip_empty``. Adapters build one per call from their fields."""

    scorer: ScorerLike
    top_n: int | None = None
    threshold: float | None = None
    skip_empty: bool = False
    strategy: Strategy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        strategy = as_strategy(self.scorer)
        object.__setattr__(self, "strategy", strategy)
        object.__setattr__(self, "top_n", check_top_n(self.top_n))
        threshold = check_threshold(strategy.scale, self.threshold, who=f"scorer {strategy.name!r}")
        object.__setattr__(self, "threshold", threshold)


def check_options(scorer: ScorerLike, top_n: Any, threshold: Any) -> Strategy:
    """Validate ``top_n`` and ``threshold`` for ``scorer`` up front and return it as a strategy
    (adapters call this once, at construction)."""
    return RerankOptions(scorer, top_n=top_n, threshold=threshold).strategy


def _checked_query(query: str) -> str:
    """``query``, checked before anything else (an empty query is the error to report first)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ConfigError("query is empty: a reranker needs a query to score candidates against")
    return query


def _as_candidates(candidates: Sequence[CandidateLike]) -> list[Candidate]:
    if isinstance(candidates, str | bytes):
        raise TypeError("candidates must be a sequence of Candidate or str, not a single string")
    if candidates is None or not isinstance(candidates, Iterable):
        raise TypeError(f"candidates must be a sequence of Candidate or str, got {type(candidates).__name__}")
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
    options: RerankOptions
    todo: Ranking  # what goes to the strategy (after skip_empty)

    @property
    def strategy(self) -> Strategy:
        return self.options.strategy


def _plan(query: str, candidates: Sequence[CandidateLike], options: RerankOptions) -> _Plan:
    start = Ranking.start(_as_candidates(candidates))
    todo = start
    if options.skip_empty:
        todo = start.then([e for e in start if e.text.strip()], by="skip_empty", default_reason="empty text")
        if todo.dropped:
            logger.info("skip_empty: %d empty candidate(s) left out of the ranking", len(todo.dropped))
    return _Plan(query, options, todo)


def _adopt(plan: _Plan, out: Ranking) -> Ranking:
    """The strategy's result with the plan's own drops (skip_empty) added, after checking that it
    kept or marked dropped every candidate it was given exactly once (a third-party strategy may
    build a Ranking by hand): :meth:`Ranking.check_returned`, as every layer is checked."""
    plan.todo.sub(plan.todo.entries).check_returned(
        repr(plan.strategy.name), out.entries, out.dropped, complete=True
    )
    return Ranking(out.entries, plan.todo.dropped + out.dropped, out.scale, out.info)


def _cut(plan: _Plan, out: Ranking) -> Ranking:
    """Threshold (reranked entries only), then top_n."""
    top_n, t = plan.options.top_n, plan.options.threshold
    if t is not None:
        out = out.then(
            [e for e in out if not e.reranked or e.score >= t],
            by="threshold",
            default_reason=f"score below threshold {t}",
        )
    if top_n is not None and len(out) > top_n:
        out = out.then(out.entries[:top_n], by="top_n", default_reason=f"beyond top_n={top_n}")
    return out


def _details(plan: _Plan, out: Ranking, e: Entry) -> dict[str, Any]:
    details = {
        **out.info,
        **e.details,
        "original_rank": e.position,
        "model": plan.strategy.name,
        "score": e.score,
        "scale": out.scale.value,
        "reranked": e.reranked,
        "retrieval_score": e.candidate.retrieval_score,
    }
    if e.dropped_by is not None:
        details["dropped_by"] = e.dropped_by
        details["drop_reason"] = e.drop_reason
        if e.reranked and e.drop_scale is not None:  # its score is on the scale of the layer that dropped it
            details["scale"] = e.drop_scale.value
    return details


def _scored(plan: _Plan, out: Ranking, entries: Sequence[Entry] | None = None) -> list[Scored]:
    """``entries`` (by default the kept ones: the dropped need no Scored objects for rerank) as
    the Scored objects rerank returns, best first."""
    if entries is None:
        entries = out.entries
    return [
        Scored(candidate=e.candidate, score=e.score, rank=rank, details=_details(plan, out, e))
        for rank, e in enumerate(entries)
    ]


@dataclass(frozen=True, slots=True)
class Explained:
    """What :func:`explain` returns: the ``kept`` result (exactly what :func:`rerank` returns),
    every ``dropped`` candidate, whose ``details["dropped_by"]`` / ``["drop_reason"]`` say why, and
    the ``usage`` the call spent per backend name (``{"cohere:rerank-v3.5": Usage(requests=1,
    search_units=1, ...)}``: the API requests sent, retries included, and what they billed; empty
    when no API was called: local models, cache hits)."""

    kept: list[Scored]
    dropped: list[Scored]
    usage: Mapping[str, Usage] = field(default_factory=dict)


def _ranked(query: str, candidates: Sequence[CandidateLike], options: RerankOptions) -> tuple[_Plan, Ranking]:
    """The final ranking (strategy run, checked, then threshold and top_n) and its plan."""
    plan = _plan(query, candidates, options)
    out = (
        plan.strategy.run(plan.query, plan.todo.sub(plan.todo.entries))
        if plan.todo.entries
        else plan.todo.sub([])
    )
    return plan, _cut(plan, _adopt(plan, out))


async def _aranked(
    query: str, candidates: Sequence[CandidateLike], options: RerankOptions
) -> tuple[_Plan, Ranking]:
    """Async :func:`_ranked`."""
    plan = _plan(query, candidates, options)
    if plan.todo.entries:
        out = await plan.strategy.arun(plan.query, plan.todo.sub(plan.todo.entries))
    else:
        out = plan.todo.sub([])
    return plan, _cut(plan, _adopt(plan, out))


def _explained(plan: _Plan, out: Ranking, usage: Mapping[str, Usage]) -> Explained:
    return Explained(_scored(plan, out, out.entries), _scored(plan, out, out.dropped), usage)


def rerank_with(query: str, candidates: Sequence[CandidateLike], options: RerankOptions) -> list[Scored]:
    """:func:`rerank` with its options already built (adapters build theirs from their fields)."""
    return _scored(*_ranked(_checked_query(query), candidates, options))


async def arerank_with(
    query: str, candidates: Sequence[CandidateLike], options: RerankOptions
) -> list[Scored]:
    """Async :func:`rerank_with`."""
    return _scored(*await _aranked(_checked_query(query), candidates, options))


def explain(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: ScorerLike,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> Explained:
    """:func:`rerank`, plus every candidate that did not make it and who dropped it, and what
    the API calls it made spent (``usage``, per backend).

    >>> from rerankers_plugins import FakeScorer
    >>> ex = explain("red apple", ["banana", "red apple pie", "apple"], FakeScorer(), top_n=1)
    >>> [s.text for s in ex.kept], [(s.text, s.details["dropped_by"]) for s in ex.dropped]
    (['red apple pie'], [('apple', 'top_n'), ('banana', 'top_n')])
    """
    query = _checked_query(query)
    options = RerankOptions(scorer, top_n=top_n, threshold=threshold, skip_empty=skip_empty)
    with collect_usage() as spent:
        plan, out = _ranked(query, candidates, options)
    return _explained(plan, out, spent.by_backend())


async def aexplain(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: ScorerLike,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> Explained:
    """Async :func:`explain`."""
    query = _checked_query(query)
    options = RerankOptions(scorer, top_n=top_n, threshold=threshold, skip_empty=skip_empty)
    with collect_usage() as spent:
        plan, out = await _aranked(query, candidates, options)
    return _explained(plan, out, spent.by_backend())


def rerank(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: ScorerLike,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> list[Scored]:
    """Score ``candidates`` against ``query`` with ``scorer`` and return them best first.

    ``scorer`` is a Scorer, a Ranker or a strategy built from them. ``candidates`` are
    :class:`Candidate` objects or plain strings (given ids ``"0"``, ``"1"``, ...). ``threshold``
    keeps scores ``>=`` it and must lie on the scorer's declared scale; ``top_n`` keeps the best
    ``n`` after the threshold (None keeps all). Empty or whitespace-only texts are scored like any
    other unless ``skip_empty=True``, which leaves them out (logged).

        >>> from rerankers_plugins import FakeScorer
        >>> [s.text for s in rerank("red apple", ["banana", "red apple pie", "apple"], FakeScorer())]
        ['red apple pie', 'apple', 'banana']
        >>> [s.text for s in rerank("red apple", ["banana", "red apple pie", "apple"], FakeScorer(),
        ...                         threshold=0.5)]
        ['red apple pie', 'apple']
    """
    query = _checked_query(query)
    options = RerankOptions(scorer, top_n=top_n, threshold=threshold, skip_empty=skip_empty)
    return _scored(*_ranked(query, candidates, options))


async def arerank(
    query: str,
    candidates: Sequence[CandidateLike],
    scorer: ScorerLike,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    skip_empty: bool = False,
) -> list[Scored]:
    """Async :func:`rerank`: backends with a native async client use it; model compute runs in a
    worker thread, so the event loop is never blocked."""
    query = _checked_query(query)
    options = RerankOptions(scorer, top_n=top_n, threshold=threshold, skip_empty=skip_empty)
    return _scored(*await _aranked(query, candidates, options))
