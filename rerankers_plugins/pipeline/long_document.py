"""Long documents: score overlapping passages and aggregate, instead of truncating."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import as_scorer_leaf
from rerankers_plugins.scorers.base import BaseScorer, Scorer, ScoreResult

__all__ = ["LongDocument", "split_passages"]


def split_passages(text: str, max_words: int, overlap: int) -> list[tuple[int, str]]:
    """``(start word, passage)`` windows of ``max_words`` words overlapping by ``overlap`` words.

    >>> split_passages("a b c d e f g", max_words=3, overlap=1)
    [(0, 'a b c'), (2, 'c d e'), (4, 'e f g')]
    >>> split_passages("short text", max_words=3, overlap=1)
    [(0, 'short text')]
    """
    words = text.split()
    if len(words) <= max_words:
        return [(0, text)]
    stride = max_words - overlap
    out = []
    for start in range(0, len(words), stride):
        out.append((start, " ".join(words[start : start + max_words])))
        if start + max_words >= len(words):
            break
    return out


class LongDocument(BaseScorer):
    """Split texts longer than ``max_words`` into passages overlapping by ``overlap`` words, score
    every passage with ``scorer`` (one call for all), and aggregate per document by ``"max"``
    (default), ``"mean"`` or ``"first"``. ``details["passage"]`` / ``["passage_start_word"]`` tell
    which passage decided the score (``max``), ``details["passages"]`` how many there were.

    With a ``document_template`` on ``scorer``, each document is filled in first and then split:
    the fields the template puts before ``{text}`` are read with the first passage.

    It is itself a leaf scorer (a document's score depends only on the query and its text), so
    strategies go around it (``Threshold(LongDocument(ce), absolute=0.5)``) and it can be cached.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_words: int = 200,
        overlap: int = 50,
        aggregate: Literal["max", "mean", "first"] = "max",
    ) -> None:
        self._leaf = as_scorer_leaf(scorer, "LongDocument")
        self.scale = self._leaf.scale
        self.max_words = as_int(max_words, "max_words", minimum=2) or 2
        self.overlap = as_int(overlap, "overlap", minimum=0) or 0
        if self.overlap >= self.max_words:
            raise ConfigError(f"overlap must be an int in 0..max_words-1, got {overlap!r}")
        if aggregate not in ("max", "mean", "first"):
            raise ConfigError(f"aggregate must be 'max', 'mean' or 'first', got {aggregate!r}")
        self.scorer, self.aggregate = scorer, aggregate
        self.pure = self._leaf.pure
        self.on_error = self._leaf.on_error
        # the wrapped scorer's template: the leaf around this one renders, the texts arrive filled
        self.document_template = self._leaf.template
        self.name = self._leaf.name

    def fingerprint(self) -> Mapping[str, Any]:
        return {**self._leaf.fingerprint(), "long_document": [self.max_words, self.overlap, self.aggregate]}

    def _split(self, texts: Sequence[str]) -> tuple[list[str], list[list[tuple[int, int]]]]:
        passages: list[str] = []
        owners: list[list[tuple[int, int]]] = []  # per document: (index into passages, start word)
        for text in texts:
            mine = []
            for start, passage in split_passages(text, self.max_words, self.overlap):
                mine.append((len(passages), start))
                passages.append(passage)
            owners.append(mine)
        return passages, owners

    def _aggregate(self, owners: list[list[tuple[int, int]]], result: ScoreResult) -> ScoreResult:
        values, per = [], []
        for mine in owners:
            scores = [result.values[p] for p, _ in mine]
            best = 0 if self.aggregate == "first" else max(range(len(scores)), key=lambda k: scores[k])
            value = sum(scores) / len(scores) if self.aggregate == "mean" else scores[best]
            values.append(value)
            per.append({"passage": best, "passage_start_word": mine[best][1], "passages": len(mine)})
        return ScoreResult(values=values, info={**result.info, "aggregate": self.aggregate}, per_item=per)

    def score_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        passages, owners = self._split(texts)
        return self._aggregate(owners, self._leaf.score_texts(query, passages))

    async def ascore_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        passages, owners = self._split(texts)
        return self._aggregate(owners, await self._leaf.ascore_texts(query, passages))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.score_details(query, texts).values)
