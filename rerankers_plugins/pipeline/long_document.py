"""Long documents: score overlapping passages and aggregate, instead of truncating."""

from __future__ import annotations

from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline._strategy import Strategy, require_scores
from rerankers_plugins.pipeline.rerank import ascore_with, score_with, scorer_name
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import Candidate

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


class LongDocument(Strategy):
    """Split candidates longer than ``max_words`` into passages overlapping by ``overlap`` words,
    score every passage with ``scorer`` (one call for all), and aggregate per document by ``"max"``
    (default), ``"mean"`` or ``"first"``. ``details["passage"]`` / ``["passage_start_word"]`` tell
    which passage decided the score (``max``), ``details["passages"]`` how many there were."""

    def __init__(
        self,
        scorer: Any,
        *,
        max_words: int = 200,
        overlap: int = 50,
        aggregate: Literal["max", "mean", "first"] = "max",
    ) -> None:
        self.scale = require_scores(scorer, "LongDocument")
        if not isinstance(max_words, int) or max_words < 2:
            raise ConfigError(f"max_words must be an int >= 2, got {max_words!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < max_words:
            raise ConfigError(f"overlap must be an int in 0..max_words-1, got {overlap!r}")
        if aggregate not in ("max", "mean", "first"):
            raise ConfigError(f"aggregate must be 'max', 'mean' or 'first', got {aggregate!r}")
        self.scorer, self.max_words, self.overlap, self.aggregate = scorer, max_words, overlap, aggregate
        self.name = scorer_name(scorer)

    def _split(self, candidates: list[Candidate]) -> tuple[list[Candidate], list[list[tuple[int, int]]]]:
        passages: list[Candidate] = []
        owners: list[list[tuple[int, int]]] = []  # per document: (index into passages, start word)
        for c in candidates:
            mine = []
            for start, text in split_passages(c.text, self.max_words, self.overlap):
                mine.append((len(passages), start))
                passages.append(
                    Candidate(text, id=c.id, metadata=c.metadata, retrieval_score=c.retrieval_score)
                )
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

    def score_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        passages, owners = self._split(candidates)
        return self._aggregate(owners, score_with(self.scorer, query, passages))

    async def ascore_candidates(self, query: str, candidates: list[Candidate]) -> ScoreResult:
        passages, owners = self._split(candidates)
        return self._aggregate(owners, await ascore_with(self.scorer, query, passages))
