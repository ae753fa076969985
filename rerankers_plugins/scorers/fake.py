"""Deterministic scorers for tests and documentation: no model, no randomness, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.templates import TemplateLike, as_template
from rerankers_plugins.types import ScoreScale

__all__ = ["FakeScorer"]

_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


class FakeScorer(BaseScorer):
    """Token-overlap scorer: the fraction of the query's distinct words that occur in the text.

    Scale PROBABILITY (0..1), so thresholds behave as with a real sigmoid cross-encoder. The same
    inputs always give the same scores, which makes it a good stand-in for a model in users' tests::

        >>> FakeScorer().score("red apple", ["an apple a day", "red apple pie", "banana"])
        [0.5, 1.0, 0.0]

    ``calls`` counts :meth:`score` invocations, so tests can assert that a cache or an empty
    input made no model call.

    Args:
        name: the model name shown in details.
        document_template: what it reads of each candidate (None: its text), as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
    """

    scale = ScoreScale.PROBABILITY

    def __init__(self, name: str = "fake-overlap", *, document_template: TemplateLike | None = None) -> None:
        self.name = name
        self.document_template = as_template(document_template)
        self.calls = 0

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls += 1
        q = _tokens(query)
        if not q:
            return [0.0 for _ in texts]
        return [len(q & _tokens(t)) / len(q) for t in texts]
