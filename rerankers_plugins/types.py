"""Core value types: what goes into a reranker and what comes out.

Both are frozen dataclasses: a reranker never changes what it was given, and what it returns
cannot be changed behind another caller's back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Candidate", "FrozenMap", "ScoreScale", "Scored", "freeze", "thaw"]


class ScoreScale(StrEnum):
    """The meaning of a scorer's numbers, so that a threshold means the same thing everywhere.

    ``PROBABILITY``  0..1, a calibrated-ish probability of relevance (sigmoid of a one-label cross-encoder).
    ``LOGIT``        any finite real; larger is more relevant (raw cross-encoder output).
    ``SIMILARITY``   cosine similarity, -1..1 (bi-encoders); late-interaction sums are declared by their scorer.
    ``RELEVANCE``    0..1 relevance reported by an API (Cohere, rerank servers).
    ``RANK_ONLY``    an order without meaningful scores (listwise LLMs): thresholds are refused.
    """

    PROBABILITY = "probability"
    LOGIT = "logit"
    SIMILARITY = "similarity"
    RELEVANCE = "relevance"
    RANK_ONLY = "rank_only"

    @property
    def bounds(self) -> tuple[float, float] | None:
        """Closed range of valid scores and thresholds, or None where thresholds make no sense."""
        return _BOUNDS[self]


_BOUNDS: dict[ScoreScale, tuple[float, float] | None] = {
    ScoreScale.PROBABILITY: (0.0, 1.0),
    ScoreScale.LOGIT: (-math.inf, math.inf),
    ScoreScale.SIMILARITY: (-1.0, 1.0),
    ScoreScale.RELEVANCE: (0.0, 1.0),
    ScoreScale.RANK_ONLY: None,
}


class FrozenMap(Mapping[str, Any]):
    """A read-only mapping that, unlike ``types.MappingProxyType``, survives ``pickle``,
    ``copy.deepcopy`` and ``multiprocessing``. Equal to any mapping with the same items.

    >>> m = FrozenMap({"a": 1})
    >>> m["a"], dict(m), m == {"a": 1}
    (1, {'a': 1}, True)
    >>> import pickle; pickle.loads(pickle.dumps(m)) == m
    True
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, Any]]]:
        return (FrozenMap, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def freeze(value: Any) -> Any:
    """A read-only deep view of plain data: dicts become :class:`FrozenMap`, lists and tuples
    tuples (recursively); anything else is returned as is."""
    if isinstance(value, Mapping):
        return FrozenMap({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: fresh plain dicts and lists that share nothing with ``value``
    (other objects are shared, not copied)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _real(value: Any, what: str) -> float:
    """``value`` as a float (numpy scalars included); TypeError for anything that is not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} ({value!r:.60})")
    return float(value)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One first-stage result to be reranked.

    ``text`` is what the model reads. ``id`` identifies it to the caller (a document id, an index).
    ``metadata`` is carried through untouched (a read-only copy, nested dicts and lists included). ``retrieval_score`` is the first
    stage's score, if any.
    """

    text: str
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    retrieval_score: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(
                f"Candidate.text must be a str, got {type(self.text).__name__} ({self.text!r:.60})"
            )
        # the caller's mapping is copied all the way down, never kept: nested dicts and lists are
        # read-only copies too, so no scorer or metadata signal can write into the caller's data
        object.__setattr__(self, "metadata", freeze(self.metadata))
        if self.retrieval_score is not None:
            score = _real(self.retrieval_score, "retrieval_score")
            if not math.isfinite(score):
                raise ValueError(
                    f"retrieval_score must be finite, got {score} (pass None when there is none)"
                )
            object.__setattr__(self, "retrieval_score", score)


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with its rerank score and 0-based ``rank`` in the reranked list.

    ``details`` holds what a user debugging a ranking wants: ``original_rank`` (0-based position in
    the input), ``model``, ``score``, ``scale`` and any backend-specific entries.
    """

    candidate: Candidate
    score: float
    rank: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", _real(self.score, "score"))
        object.__setattr__(self, "details", freeze(self.details))

    @property
    def text(self) -> str:
        return self.candidate.text

    @property
    def id(self) -> str | None:
        return self.candidate.id
