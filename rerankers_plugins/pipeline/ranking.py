"""The one contract between layers: a :class:`Ranking` in, a :class:`Ranking` out.

A backend is a *leaf*: a :class:`~rerankers_plugins.scorers.base.Scorer` (one float per text) or a
:class:`~rerankers_plugins.scorers.base.Ranker` (a permutation). A strategy is a *composite*, a
:class:`Strategy`: ``run(query, ranking) -> ranking`` (and ``arun``). It may reorder and it may drop
entries, but only through :meth:`Ranking.then`, which marks every drop with who dropped it and why
and refuses anything lost, duplicated or foreign. :func:`as_strategy` wraps any leaf into a
strategy once, at construction; nothing probes objects for methods after that.

An entry's ``reranked`` flag says whether its ``score`` is on the ranking's declared scale. Entries
a layer passes through without scoring them on that scale (Selective's tail, a skipped gate, a
``keep_order`` fallback) carry ``reranked=False``, and no threshold applies to them at any depth.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, Union, cast

from rerankers_plugins._checks import as_int, as_real, check_threshold, check_top_n
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers.base import Ranker, Scorer, ScoreResult
from rerankers_plugins.types import Candidate, FrozenMap, ScoreScale, freeze

__all__ = [
    "Entry",
    "RankerLeaf",
    "Ranking",
    "ScorerLeaf",
    "ScorerLike",
    "Strategy",
    "as_int",
    "as_real",
    "as_strategy",
    "backends",
    "check_threshold",
    "check_top_n",
    "require_scores",
]

logger = logging.getLogger(__name__)


# -- the values that flow between layers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One candidate inside a :class:`Ranking`.

    ``position`` is its index in the list given to ``rerank`` (its identity across layers).
    ``score`` is on the ranking's scale when ``reranked`` is True; otherwise it is carried (a
    retrieval score, a selective head's floor) and exempt from thresholds. ``details`` accumulate
    what each layer recorded. A dropped entry carries ``dropped_by``, ``drop_reason`` and
    ``drop_scale`` (the scale of its ``score`` where it was dropped), and its score and details as
    the layer that dropped it saw them.
    """

    candidate: Candidate
    position: int
    score: float = 0.0
    reranked: bool = False
    details: Mapping[str, Any] = field(default_factory=FrozenMap)
    dropped_by: str | None = None
    drop_reason: str | None = None
    drop_scale: ScoreScale | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", freeze(self.details))

    @property
    def text(self) -> str:
        return self.candidate.text

    def scored(self, score: float, details: Mapping[str, Any] | None = None) -> Entry:
        """This entry with a score on the ranking's scale, and ``details`` added."""
        return replace(self, score=score, reranked=True, details={**self.details, **(details or {})})

    def passed(self, score: float | None = None, details: Mapping[str, Any] | None = None) -> Entry:
        """This entry passed through unscored (``reranked=False``), optionally with a carried score."""
        return replace(
            self,
            score=self.score if score is None else score,
            reranked=False,
            details={**self.details, **(details or {})},
        )

    def noted(self, details: Mapping[str, Any]) -> Entry:
        """This entry with ``details`` added, nothing else changed."""
        return replace(self, details={**self.details, **details})


@dataclass(frozen=True, slots=True)
class Ranking:
    """An immutable ranking: ``entries`` kept, best first; ``dropped`` with who dropped each and why.

    Iterating, ``len`` and indexing see the kept entries. Strategies derive new rankings only with
    :meth:`sub` (a ranking of some kept entries, to hand to an inner layer) and :meth:`then` (the
    layer's result, which marks drops and checks that nothing is lost or duplicated).
    """

    entries: tuple[Entry, ...]
    dropped: tuple[Entry, ...] = ()
    scale: ScoreScale = ScoreScale.RANK_ONLY
    info: Mapping[str, Any] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "dropped", tuple(self.dropped))
        object.__setattr__(self, "info", freeze(self.info))

    @classmethod
    def start(cls, candidates: Sequence[Candidate]) -> Ranking:
        """The first-stage order: positions ``0..n-1``, scores carried from ``retrieval_score`` (or
        0.0), nothing reranked yet."""
        return cls(
            tuple(
                Entry(c, i, float(c.retrieval_score) if c.retrieval_score is not None else 0.0)
                for i, c in enumerate(candidates)
            )
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> Entry:
        return self.entries[i]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.entries]

    def sub(self, entries: Iterable[Entry]) -> Ranking:
        """A ranking of some of this ranking's kept entries (no drops yet), for an inner layer."""
        return Ranking(tuple(entries), (), self.scale)

    def then(
        self,
        kept: Iterable[Entry],
        *,
        by: str,
        dropped: Iterable[Entry] = (),
        cut: Iterable[Entry] = (),
        reasons: Mapping[int, str] | None = None,
        default_reason: str = "",
        scale: ScoreScale | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Ranking:
        """What a layer returns from this ranking.

        ``kept``: entries of this ranking (possibly rescored or annotated), in the new order.
        ``dropped``: entries an inner layer already marked as dropped. ``cut``: entries this layer
        drops, as it scored and annotated them (so that an explanation shows the numbers the drop
        was decided on). Every entry of this ranking neither kept nor passed on as dropped is
        marked dropped by ``by``, for ``reasons[position]`` (else ``default_reason``): its ``cut``
        version where given (on the new ``scale``), else this ranking's (on this ranking's scale).
        Raises BackendError (naming ``by``) for an entry that is not this ranking's, or is given twice.
        """
        mine = {e.position: e.candidate for e in self.entries}
        kept_t, dropped_t, cut_t = tuple(kept), tuple(dropped), tuple(cut)
        seen: set[int] = set()
        for e in (*kept_t, *dropped_t, *cut_t):
            if mine.get(e.position) is not e.candidate:
                raise BackendError(f"{by} returned a candidate it was not given (position {e.position})")
            if e.position in seen:
                raise BackendError(f"{by} returned position {e.position} twice")
            seen.add(e.position)
        if any(e.dropped_by is None for e in dropped_t):
            raise BackendError(f"{by} passed on a dropped entry without saying who dropped it")
        if any(e.dropped_by is not None for e in cut_t):
            raise BackendError(f"{by} cut an entry that an inner layer had already dropped")
        reasons = reasons or {}
        new_scale = self.scale if scale is None else scale
        cut_by = {e.position: e for e in cut_t}
        passed_on = {e.position for e in (*kept_t, *dropped_t)}
        new_drops = tuple(
            replace(
                cut_by.get(e.position, e),
                dropped_by=by,
                drop_reason=reasons.get(e.position, default_reason),
                drop_scale=new_scale if e.position in cut_by else self.scale,
            )
            for e in self.entries
            if e.position not in passed_on
        )
        for e in new_drops:
            logger.debug("%s dropped %r (position %d): %s", by, e.candidate.id, e.position, e.drop_reason)
        return Ranking(kept_t, self.dropped + dropped_t + new_drops, new_scale, {**self.info, **(info or {})})


# -- composites and leaves --------------------------------------------------------------------------


class Strategy(ABC):
    """A composite layer: ``run(query, ranking) -> ranking`` (and ``arun``).

    Subclasses set ``name`` (reported as ``details["model"]`` when outermost) and ``scale`` (of
    the scores they return), and implement :meth:`run`; :meth:`arun` defaults to :meth:`run` in
    a worker thread. A strategy only sees what the layer inside it kept.
    """

    name: str = "strategy"
    scale: ScoreScale = ScoreScale.LOGIT

    @abstractmethod
    def run(self, query: str, ranking: Ranking) -> Ranking: ...

    def children(self) -> tuple[Strategy, ...]:
        """The layers this one wraps (none for a leaf): for tools that walk a pipeline."""
        return ()

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        return await asyncio.to_thread(self.run, query, ranking)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, scale={self.scale.value})"


ScorerLike = Union[Scorer, Ranker, Strategy]  # noqa: UP007 (a runtime alias of protocols and an ABC)


#: how far outside its declared scale a score may fall by float error before it is an error
SCALE_TOLERANCE = 1e-3


def _as_list(raw: Any, who: str, wanted: str) -> list[Any]:
    """A backend's answer as a list: a list or tuple, an iterator or generator, or a 1-D numpy
    array or torch tensor (read with ``tolist()``, on any device). BackendError naming ``who`` for
    anything else: None, a scalar, a string or bytes, a mapping or a set (no order), a 0-d array."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if raw is None or isinstance(raw, str | bytes | bytearray | Mapping | AbstractSet):
        raise BackendError(f"{who} returned {type(raw).__name__} ({raw!r:.60}), not {wanted}")
    tolist = getattr(raw, "tolist", None)
    if callable(tolist):
        try:
            out = tolist()
        except Exception as exc:
            raise BackendError(f"{who} returned {type(raw).__name__}, not {wanted}: {exc}") from exc
        if isinstance(out, list):
            return out
        raise BackendError(f"{who} returned a single {type(raw).__name__} ({out!r:.60}), not {wanted}")
    try:
        iterator = iter(raw)
    except TypeError:
        raise BackendError(f"{who} returned {type(raw).__name__} ({raw!r:.60}), not {wanted}") from None
    return list(iterator)


def _check_values(raw: Any, n: int, name: str, scale: ScoreScale) -> list[float]:
    values = _as_list(raw, f"scorer {name!r}", "a list of scores")
    bad_type = [i for i, s in enumerate(values) if isinstance(s, bool) or not isinstance(s, numbers.Real)]
    if bad_type:
        i = bad_type[0]
        raise BackendError(
            f"scorer {name!r} returned a non-numeric score {values[i]!r:.60} ({type(values[i]).__name__}) "
            f"at position {i}"
        )
    if len(values) != n:
        raise BackendError(
            f"scorer {name!r} returned {len(values)} scores for {n} texts; "
            "a scorer must return exactly one score per text, in input order"
        )
    scores: list[float] = []
    for s in values:
        try:
            scores.append(float(s))
        except OverflowError:  # an int beyond float range
            scores.append(math.inf)
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise BackendError(f"scorer {name!r} returned non-finite scores (NaN or inf) at positions {bad[:10]}")
    bounds = scale.bounds
    if bounds is not None:
        lo, hi = bounds
        off = [i for i, s in enumerate(scores) if not lo - SCALE_TOLERANCE <= s <= hi + SCALE_TOLERANCE]
        if off:
            raise BackendError(
                f"scorer {name!r} returned {scores[off[0]]} at position {off[0]}, outside its declared "
                f"{scale.value} scale [{lo}, {hi}]"
            )
        scores = [min(max(s, lo), hi) for s in scores]  # float error within the tolerance: clamped
    return scores


def _check_permutation(raw: Any, n: int, name: str) -> list[int]:
    order = _as_list(raw, f"ranker {name!r}", f"a permutation of range({n})")
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in order) or sorted(
        int(i) for i in order
    ) != list(range(n)):
        raise BackendError(f"ranker {name!r} returned {order[:20]!r:.200}, not a permutation of range({n})")
    return [int(i) for i in order]


def _check_result(result: Any, n: int, who: str) -> ScoreResult:
    """A detailed method's answer checked as a :class:`ScoreResult`: ``info`` a mapping, ``per_item``
    None or one mapping per text (``per_item`` returned as a list). BackendError naming ``who``."""
    if not isinstance(result, ScoreResult):
        raise BackendError(f"{who} returned {type(result).__name__} ({result!r:.60}), not a ScoreResult")
    if not isinstance(result.info, Mapping):
        raise BackendError(f"{who} returned info of type {type(result.info).__name__}, not a mapping")
    if result.per_item is None:
        return result
    per = _as_list(result.per_item, f"{who} (per_item)", "a list of detail mappings")
    if len(per) != n:
        raise BackendError(f"{who} returned {len(per)} detail entries for {n} texts")
    if not all(isinstance(d, Mapping) for d in per):
        raise BackendError(f"{who} returned per_item entries that are not mappings")
    return replace(result, per_item=per)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(name: str, query: str, texts: list[str]) -> tuple[str, list[str]]:
    """Query and texts a model or an HTTP body can take: lone surrogates (text decoded badly
    upstream, which tokenizers and UTF-8 encoders reject) become U+FFFD, logged once per call.
    The candidates themselves are returned unchanged."""
    if not _SURROGATE.search(query) and not any(_SURROGATE.search(t) for t in texts):
        return query, texts
    logger.warning("%s: lone surrogates in the query or texts were replaced by U+FFFD for scoring", name)
    return _SURROGATE.sub("\ufffd", query), [_SURROGATE.sub("\ufffd", t) for t in texts]


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


class _Leaf(Strategy):
    """A leaf as a strategy: calls the backend on the kept texts; ``on_error="keep_order"`` falls
    back to passing the input through in order, marked, so the layers around it go on."""

    leaf: Any
    _sync: SyncCall
    _async: AsyncCall

    def __init__(self, leaf: Any, kind: str, detailed: str, plain: str) -> None:
        self.leaf = leaf
        self.name = str(getattr(leaf, "name", None) or type(leaf).__name__)
        self.on_error = getattr(leaf, "on_error", "raise")
        self._kind = kind
        self._who = f"{kind} {self.name!r}"
        # Chosen once, here: the richest method the backend has (``*_details`` returns ScoreResult).
        # Whatever a method returns is checked by the leaf (a BackendError naming it, so that
        # ``on_error="keep_order"`` applies to a malformed answer as to a failure).
        sync = getattr(leaf, detailed, None)
        self._sync = sync if sync is not None else _plain(getattr(leaf, plain))
        adetailed, aplain = getattr(leaf, "a" + detailed, None), getattr(leaf, "a" + plain, None)
        if adetailed is not None:
            self._async = _adetailed(adetailed, self._who)
        elif sync is None and aplain is not None:
            self._async = _aplain(aplain, self._who)
        else:
            self._async = _threaded(self._sync)

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
        try:
            return self._apply(ranking, self._sync(*_encodable(self.name, query, ranking.texts)))
        except BackendError as exc:
            if self.on_error != "keep_order":
                raise
            return self._fallback(ranking, exc)

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        if not ranking.entries:
            return ranking.then([], by=self.name, scale=self.scale)
        try:
            return self._apply(ranking, await self._async(*_encodable(self.name, query, ranking.texts)))
        except BackendError as exc:
            if self.on_error != "keep_order":
                raise
            return self._fallback(ranking, exc)


class ScorerLeaf(_Leaf):
    """A :class:`Scorer` as a strategy: every kept entry scored, sorted best first (ties keep order)."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__(scorer, "scorer", "score_details", "score")
        scale = getattr(scorer, "scale", None)
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
        result = _check_result(result, n, self._who)
        return replace(result, values=_check_values(result.values, n, self.name, self.scale))

    def score_texts(self, query: str, texts: list[str]) -> ScoreResult:
        """The backend's checked scores for ``texts``, no fallback (for leaves that wrap leaves)."""
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
        order = sorted(range(len(entries)), key=lambda k: -entries[k].score)  # stable: ties keep order
        return ranking.then([entries[k] for k in order], by=self.name, scale=self.scale, info=result.info)


class RankerLeaf(_Leaf):
    """A :class:`Ranker` as a strategy: its permutation, scores ``n - position`` (scale RANK_ONLY)."""

    scale = ScoreScale.RANK_ONLY

    def __init__(self, ranker: Ranker) -> None:
        super().__init__(ranker, "ranker", "rank_details", "rank")

    def _apply(self, ranking: Ranking, result: ScoreResult) -> Ranking:
        n = len(ranking)
        result = _check_result(result, n, self._who)
        order = _check_permutation(result.values, n, self.name)
        per = result.per_item
        entries = [
            ranking[i].scored(float(n - pos), per[i] if per is not None else None)
            for pos, i in enumerate(order)
        ]
        return ranking.then(entries, by=self.name, scale=self.scale, info=result.info)


def as_strategy(obj: ScorerLike) -> Strategy:
    """The one place a backend becomes a strategy: a :class:`Strategy` as is, a Scorer (``score``)
    as :class:`ScorerLeaf`, a Ranker (``rank``) as :class:`RankerLeaf`; ConfigError otherwise."""
    if isinstance(obj, Strategy):
        return obj
    if hasattr(obj, "score") or hasattr(obj, "score_details"):
        return ScorerLeaf(cast(Scorer, obj))
    if hasattr(obj, "rank") or hasattr(obj, "rank_details"):
        return RankerLeaf(obj)
    raise ConfigError(
        f"{type(obj).__name__} is neither a Scorer (score(query, texts)), a Ranker (rank(query, texts)) "
        "nor a Strategy"
    )


def backends(strategy: Strategy) -> list[Any]:
    """Every backend object at the leaves of ``strategy``, depth first, each once."""
    out: list[Any] = []
    stack = [strategy]
    while stack:
        node = stack.pop()
        if isinstance(node, _Leaf) and not any(b is node.leaf for b in out):
            out.append(node.leaf)
        stack.extend(reversed(node.children()))
    return out


def as_scorer_leaf(obj: Any, who: str) -> ScorerLeaf:
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
