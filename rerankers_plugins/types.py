"""Core value types: what goes into a reranker and what comes out.

Both are frozen dataclasses: a reranker never changes what it was given, and what it returns
cannot be changed behind another caller's back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = ["Candidate", "ScoreScale", "Scored"]


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


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One first-stage result to be reranked.

    ``text`` is what the model reads. ``id`` identifies it to the caller (a document id, an index).
    ``metadata`` is carried through untouched (a read-only copy). ``retrieval_score`` is the first
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
        object.__setattr__(self, "metadata", _frozen_mapping(self.metadata))


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
        object.__setattr__(self, "details", _frozen_mapping(self.details))

    @property
    def text(self) -> str:
        return self.candidate.text

    @property
    def id(self) -> str | None:
        return self.candidate.id
