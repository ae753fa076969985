"""The one contract between layers: a :class:`Ranking` in, a :class:`Ranking` out.

A backend is a *leaf*: a :class:`~rerankers_plugins.scorers.base.Scorer` (one float per text) or a
:class:`~rerankers_plugins.scorers.base.Ranker` (a permutation). A strategy is a *composite*, a
:class:`Strategy`: ``run(query, ranking) -> ranking`` (and ``arun``). It may reorder and it may drop
entries, but only through :meth:`Ranking.then`, which marks every drop with who dropped it and why
and refuses anything lost, duplicated or foreign.
:func:`~rerankers_plugins.pipeline.leaves.as_strategy` wraps any leaf into a strategy once, at
construction; nothing probes objects for methods after that.

An entry's ``reranked`` flag says whether its ``score`` is on the ranking's declared scale. Entries
a layer passes through without scoring them on that scale (Selective's tail, a skipped gate, a
``keep_order`` fallback) carry ``reranked=False``, and no threshold applies to them at any depth.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rerankers_plugins.errors import BackendError
from rerankers_plugins.types import Candidate, FrozenMap, ScoreScale, freeze

__all__ = ["Entry", "Ranking", "Strategy", "candidate_label"]

logger = logging.getLogger(__name__)


# -- the values that flow between layers ------------------------------------------------------------


def candidate_label(candidate: Candidate, position: int) -> str:
    """How a message names a candidate: its id, or where it has none its position in the list
    given to ``rerank``.

    >>> candidate_label(Candidate("x", id="d7"), 3), candidate_label(Candidate("x"), 3)
    ("'d7'", 'at position 3')
    """
    return repr(candidate.id) if candidate.id is not None else f"at position {position}"


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

    @property
    def label(self) -> str:
        """How a message names this entry (:func:`candidate_label`)."""
        return candidate_label(self.candidate, self.position)

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

    def check_returned(
        self,
        by: str,
        kept: Sequence[Entry],
        dropped: Sequence[Entry] = (),
        cut: Sequence[Entry] = (),
        *,
        complete: bool = False,
    ) -> None:
        """The one check of what a layer returns from this ranking (its :meth:`then`, and
        ``rerank`` of a whole strategy's result, which may have built a Ranking by hand): a
        BackendError naming ``by`` for an entry that is not this ranking's or is given twice, a
        dropped entry that does not say who dropped it, a cut of an entry already dropped, and with
        ``complete`` an entry neither kept nor dropped."""
        mine = {e.position: e.candidate for e in self.entries}
        seen: set[int] = set()
        for e in (*kept, *dropped, *cut):
            if mine.get(e.position) is not e.candidate:
                raise BackendError(f"{by} returned a candidate it was not given (position {e.position})")
            if e.position in seen:
                raise BackendError(f"{by} returned position {e.position} twice")
            seen.add(e.position)
        unmarked = [e.position for e in dropped if e.dropped_by is None]
        if unmarked:
            raise BackendError(
                f"{by} passed on dropped entries without saying who dropped them: {unmarked[:10]}"
            )
        if any(e.dropped_by is not None for e in cut):
            raise BackendError(f"{by} cut an entry that an inner layer had already dropped")
        lost = sorted(set(mine) - seen) if complete else []
        if lost:
            raise BackendError(f"{by} lost candidates: positions {lost[:10]} neither kept nor dropped")

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
        kept_t, dropped_t, cut_t = tuple(kept), tuple(dropped), tuple(cut)
        self.check_returned(by, kept_t, dropped_t, cut_t)
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


# -- composites -------------------------------------------------------------------------------------


class Strategy(ABC):
    """A composite layer: ``run(query, ranking) -> ranking`` (and ``arun``).

    Subclasses set ``name`` (reported as ``details["model"]`` when outermost) and ``scale`` (of
    the scores they return), and implement :meth:`run`; :meth:`arun` defaults to :meth:`run` in
    a worker thread. A strategy only sees what the layer inside it kept.
    """

    name: str = "strategy"
    #: declared by every subclass (a class attribute, or set in ``__init__``): what a threshold on
    #: this strategy's scores means depends on it, so it never defaults
    scale: ScoreScale

    def __getattr__(self, name: str) -> Any:
        # reached only when the attribute is missing: a strategy that declares no scale says so
        if name == "scale":
            raise AttributeError(
                f"{type(self).__name__} declares no scale: set self.scale (a ScoreScale: the scale of "
                "the scores it returns) in __init__ or as a class attribute"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @abstractmethod
    def run(self, query: str, ranking: Ranking) -> Ranking: ...

    def children(self) -> tuple[Strategy, ...]:
        """The layers this one wraps (none for a leaf): for tools that walk a pipeline."""
        return ()

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        return await asyncio.to_thread(self.run, query, ranking)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, scale={self.scale.value})"
