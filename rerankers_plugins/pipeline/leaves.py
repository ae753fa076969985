"""A leaf wrapped once: the one place a backend (a Scorer or a Ranker) becomes a :class:`Strategy`.

:func:`as_strategy` wraps a Scorer as :class:`ScorerLeaf` and a Ranker as :class:`RankerLeaf`, at
construction; the leaf chooses the backend's methods then (the richest it has: ``*_details``
returns a :class:`~rerankers_plugins.scorers.base.ScoreResult`), checks whatever they return
(:mod:`rerankers_plugins.pipeline.returned`), and with ``on_error="keep_order"`` passes its input
through, marked, when the backend fails. Nothing probes objects for methods after that.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Union, cast

from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.ops.fusion import best_first
from rerankers_plugins.pipeline.ranking import Ranking, Strategy
from rerankers_plugins.pipeline.returned import check_permutation, check_result, check_values, encodable
from rerankers_plugins.scorers.base import (
    AsyncDetailedRanker,
    AsyncDetailedScorer,
    AsyncRanker,
    AsyncScorer,
    DetailedRanker,
    DetailedScorer,
    Fallible,
    Fingerprinted,
    Named,
    Purity,
    Ranker,
    Ranks,
    Scaled,
    Scorer,
    ScoreResult,
    Scores,
    Templated,
)
from rerankers_plugins.templates import DocumentTemplate, as_template
from rerankers_plugins.types import ScoreScale

__all__ = [
    "RankerLeaf",
    "ScorerLeaf",
    "ScorerLike",
    "as_scorer_leaf",
    "as_strategy",
    "backends",
    "leaf_nodes",
    "require_scores",
]

logger = logging.getLogger(__name__)

ScorerLike = Union[Scorer, Ranker, Strategy]  # noqa: UP007 (a runtime alias of protocols and an ABC)
#: what a leaf wraps: an object with ``score`` or ``score_details``, or with ``rank`` or ``rank_details``
Backend = Union[Scores, DetailedScorer, Ranks, DetailedRanker]  # noqa: UP007 (as above)

SyncCall = Callable[[str, list[str]], ScoreResult]
AsyncCall = Callable[[str, list[str]], Awaitable[ScoreResult]]


def _plain(fn: Callable[[str, list[str]], Any]) -> SyncCall:
    return lambda q, texts: ScoreResult(values=fn(q, texts))  # checked by the leaf, with its name


async def _awaited(fn: Callable[[str, list[str]], Any], q: str, texts: list[str], who: str) -> Any:
    """``await fn(q, texts)``; BackendError naming ``who`` where ``fn`` returns no awaitable."""
    pending = fn(q, texts)
    if not inspect.isawaitable(pending):
        raise BackendError(
            f"{who} returned {type(pending).__name__} from an async method, not an awaitable "
            "(declare it `async def`)"
        )
    return await pending


def _aplain(fn: Callable[[str, list[str]], Awaitable[Any]], who: str) -> AsyncCall:
    async def call(q: str, texts: list[str]) -> ScoreResult:
        return ScoreResult(values=await _awaited(fn, q, texts, who))

    return call


def _adetailed(fn: AsyncCall, who: str) -> AsyncCall:
    async def call(q: str, texts: list[str]) -> ScoreResult:
        return cast(ScoreResult, await _awaited(fn, q, texts, who))

    return call


def _threaded(fn: SyncCall) -> AsyncCall:
    async def call(q: str, texts: list[str]) -> ScoreResult:
        return await asyncio.to_thread(fn, q, texts)

    return call


@dataclass(frozen=True, slots=True)
class _Methods:
    """The backend's methods a leaf calls, each None where the backend has none."""

    detailed: SyncCall | None
    plain: Callable[[str, list[str]], Any] | None
    adetailed: AsyncCall | None
    aplain: Callable[[str, list[str]], Awaitable[Any]] | None


def _scorer_methods(scorer: Scores | DetailedScorer) -> _Methods:
    return _Methods(
        scorer.score_details if isinstance(scorer, DetailedScorer) else None,
        scorer.score if isinstance(scorer, Scores) else None,
        scorer.ascore_details if isinstance(scorer, AsyncDetailedScorer) else None,
        scorer.ascore if isinstance(scorer, AsyncScorer) else None,
    )


def _ranker_methods(ranker: Ranks | DetailedRanker) -> _Methods:
    return _Methods(
        ranker.rank_details if isinstance(ranker, DetailedRanker) else None,
        ranker.rank if isinstance(ranker, Ranks) else None,
        ranker.arank_details if isinstance(ranker, AsyncDetailedRanker) else None,
        ranker.arank if isinstance(ranker, AsyncRanker) else None,
    )


def _calls(methods: _Methods, who: str) -> tuple[SyncCall, AsyncCall]:
    """The sync and async calls of a leaf, chosen once: the richest method the backend has
    (``*_details`` returns ScoreResult); a native async one, else the sync one in a worker thread.
    Whatever a method returns is checked by the leaf (a BackendError naming it, so that
    ``on_error="keep_order"`` applies to a malformed answer as to a failure)."""
    if methods.detailed is not None:
        sync = methods.detailed
    elif methods.plain is not None:
        sync = _plain(methods.plain)
    else:
        raise ConfigError(f"{who} has no method to call (score / rank, or their *_details form)")
    if methods.adetailed is not None:
        return sync, _adetailed(methods.adetailed, who)
    if methods.detailed is None and methods.aplain is not None:
        return sync, _aplain(methods.aplain, who)
    return sync, _threaded(sync)


class _Leaf(Strategy):
    """A leaf as a strategy: calls the backend on the kept texts; ``on_error="keep_order"`` falls
    back to passing the input through in order, marked, so the layers around it go on.

    The backend's optional members (:mod:`rerankers_plugins.scorers.base`) are read here, once:
    ``name`` (else its class's name), ``on_error`` (else ``"raise"``), ``pure`` (else True),
    ``fingerprint()`` (else no settings) and ``document_template`` (else the text alone: what the
    backend is given of each candidate); the layers around it read the leaf's attributes.
    """

    leaf: Backend
    on_error: str
    pure: bool
    template: DocumentTemplate | None
    _sync: SyncCall
    _async: AsyncCall

    def __init__(self, leaf: Backend, kind: str, methods: _Methods) -> None:
        self.leaf = leaf
        self.name = str((leaf.name if isinstance(leaf, Named) else None) or type(leaf).__name__)
        self.on_error = leaf.on_error if isinstance(leaf, Fallible) else "raise"
        self.pure = bool(leaf.pure) if isinstance(leaf, Purity) else True
        self._fingerprint = leaf.fingerprint if isinstance(leaf, Fingerprinted) else None
        self.template = as_template(leaf.document_template) if isinstance(leaf, Templated) else None
        self._kind = kind
        self._who = f"{kind} {self.name!r}"
        self._sync, self._async = _calls(methods, self._who)

    def fingerprint(self) -> dict[str, Any]:
        """The backend's ``fingerprint()`` (every setting that changes a score; the document
        template among them); empty without one."""
        out = dict(self._fingerprint()) if self._fingerprint is not None else {}
        if self.template is not None:
            out["document_template"] = self.template.fingerprint()
        return out

    def texts(self, ranking: Ranking) -> list[str]:
        """What the backend reads of each kept entry: its text, or the document template filled
        from the candidate (ConfigError naming the field and the candidate when one is missing)."""
        if self.template is None:
            return ranking.texts
        return [self.template.render(e.candidate, e.label) for e in ranking]

    def __reduce__(self) -> tuple[Any, ...]:
        return (as_strategy, (self.leaf,))  # rebuilt from the backend (its chosen methods are bound)

    def _fallback(self, ranking: Ranking, exc: BackendError) -> Ranking:
        logger.warning(
            "%s %r failed (%s); on_error='keep_order': passing %d candidates on in their order",
            self._kind,
            self.name,
            exc,
            len(ranking),
        )
        error = f"{type(exc).__name__}: {exc}"
        return ranking.then(
            [e.passed(details={"fallback": "keep_order", "error": error}) for e in ranking],
            by=self.name,
            scale=self.scale,
            info={"fallback": "keep_order"},
        )

    def _apply(self, ranking: Ranking, result: ScoreResult) -> Ranking:
        raise NotImplementedError

    def run(self, query: str, ranking: Ranking) -> Ranking:
        if not ranking.entries:
            return ranking.then([], by=self.name, scale=self.scale)
        texts = self.texts(ranking)  # a missing template field is the caller's error: no fallback
        try:
            return self._apply(ranking, self._sync(*encodable(self.name, query, texts)))
        except BackendError as exc:
            if self.on_error != "keep_order":
                raise
            return self._fallback(ranking, exc)

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        if not ranking.entries:
            return ranking.then([], by=self.name, scale=self.scale)
        texts = self.texts(ranking)
        try:
            return self._apply(ranking, await self._async(*encodable(self.name, query, texts)))
        except BackendError as exc:
            if self.on_error != "keep_order":
                raise
            return self._fallback(ranking, exc)


class ScorerLeaf(_Leaf):
    """A :class:`Scorer` as a strategy: every kept entry scored, sorted best first (ties keep order)."""

    def __init__(self, scorer: Scores | DetailedScorer) -> None:
        super().__init__(scorer, "scorer", _scorer_methods(scorer))
        scale = scorer.scale if isinstance(scorer, Scaled) else None
        if scale is None:
            raise ConfigError(f"scorer {self.name!r} declares no `scale` (a ScoreScale)")
        try:
            self.scale = ScoreScale(scale)
        except ValueError:
            known = ", ".join(s.value for s in ScoreScale)
            raise ConfigError(
                f"scorer {self.name!r} declares scale {scale!r}; known scales: {known}"
            ) from None

    def checked(self, result: ScoreResult, n: int) -> ScoreResult:
        """``result`` with its values checked as ``n`` finite floats on the scale (BackendError
        naming the scorer otherwise: None, a scalar, a string, the wrong length, NaN, ...)."""
        result = check_result(result, n, self._who)
        return replace(result, values=check_values(result.values, n, self.name, self.scale))

    def score_texts(self, query: str, texts: list[str]) -> ScoreResult:
        """The backend's checked scores for ``texts``, no fallback (for leaves that wrap leaves:
        they take over this leaf's ``template``, so ``texts`` are already rendered)."""
        return self.checked(self._sync(query, texts), len(texts))

    async def ascore_texts(self, query: str, texts: list[str]) -> ScoreResult:
        return self.checked(await self._async(query, texts), len(texts))

    def _apply(self, ranking: Ranking, result: ScoreResult) -> Ranking:
        result = self.checked(result, len(ranking))
        per = result.per_item
        entries = [
            e.scored(v, per[k] if per is not None else None)
            for k, (e, v) in enumerate(zip(ranking, result.values, strict=True))
        ]
        order = best_first([e.score for e in entries])  # stable: ties keep order
        return ranking.then([entries[k] for k in order], by=self.name, scale=self.scale, info=result.info)


class RankerLeaf(_Leaf):
    """A :class:`Ranker` as a strategy: its permutation, scores ``n - position`` (scale RANK_ONLY)."""

    scale = ScoreScale.RANK_ONLY

    def __init__(self, ranker: Ranks | DetailedRanker) -> None:
        super().__init__(ranker, "ranker", _ranker_methods(ranker))

    def _apply(self, ranking: Ranking, result: ScoreResult) -> Ranking:
        n = len(ranking)
        result = check_result(result, n, self._who)
        order = check_permutation(result.values, n, self.name)
        per = result.per_item
        entries = [
            ranking[i].scored(float(n - pos), per[i] if per is not None else None)
            for pos, i in enumerate(order)
        ]
        return ranking.then(entries, by=self.name, scale=self.scale, info=result.info)


def as_strategy(obj: Backend | Strategy) -> Strategy:
    """The one place a backend becomes a strategy: a :class:`Strategy` as is, a Scorer (``score``)
    as :class:`ScorerLeaf`, a Ranker (``rank``) as :class:`RankerLeaf`; ConfigError otherwise."""
    if isinstance(obj, Strategy):
        return obj
    if isinstance(obj, Scores | DetailedScorer):
        return ScorerLeaf(obj)
    if isinstance(obj, Ranks | DetailedRanker):
        return RankerLeaf(obj)
    raise ConfigError(
        f"{type(obj).__name__} is neither a Scorer (score(query, texts)), a Ranker (rank(query, texts)) "
        "nor a Strategy"
    )


def leaf_nodes(strategy: Strategy) -> list[_Leaf]:
    """Every leaf of ``strategy`` (the wrapped backends), depth first, as often as it occurs."""
    out: list[_Leaf] = []
    stack = [strategy]
    while stack:
        node = stack.pop()
        if isinstance(node, _Leaf):
            out.append(node)
        stack.extend(reversed(node.children()))
    return out


def backends(strategy: Strategy) -> list[Backend]:
    """Every backend object at the leaves of ``strategy``, depth first, each once."""
    out: list[Backend] = []
    for node in leaf_nodes(strategy):
        if not any(b is node.leaf for b in out):
            out.append(node.leaf)
    return out


def as_scorer_leaf(obj: Backend | Strategy, who: str) -> ScorerLeaf:
    """``obj`` wrapped as a leaf scorer for ``who`` (a layer that maps one text to one score):
    ConfigError for strategies and rankers, saying where they go instead."""
    if isinstance(obj, Strategy):
        raise ConfigError(
            f"{who} wraps a leaf scorer (a pure function of query and text), not the strategy {obj.name!r}: "
            f"wrap the leaf inside it instead, e.g. Threshold({who}(scorer), ...)"
        )
    leaf = as_strategy(obj)
    if not isinstance(leaf, ScorerLeaf):
        raise ConfigError(f"{who} needs scores, but {leaf.name!r} is a Ranker (RANK_ONLY: an order only)")
    return leaf


def require_scores(strategy: Strategy, what: str) -> ScoreScale:
    """The strategy's scale; ConfigError when it only ranks (``what`` needs real scores)."""
    if strategy.scale is ScoreScale.RANK_ONLY:
        raise ConfigError(f"{what} needs scores, but {strategy.name!r} is RANK_ONLY (an order only)")
    return strategy.scale
