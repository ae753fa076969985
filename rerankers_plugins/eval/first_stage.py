"""BM25 first stage over an in-memory corpus (bm25s): what a RAG chain's retriever would return."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import Candidate

__all__ = ["BM25Retriever"]

logger = logging.getLogger(__name__)


class BM25Retriever:
    """Lucene-variant BM25 (k1=1.2, b=0.75) with English stopwords and Snowball stemming when
    PyStemmer is installed.

    ``docs`` are Candidates (their ``text`` is indexed, ``id`` and ``metadata`` are carried to the
    results, ``retrieval_score`` is set to the BM25 score).
    """

    def __init__(self, docs: Sequence[Candidate], *, k1: float = 1.2, b: float = 0.75) -> None:
        if not docs:
            raise ConfigError("BM25Retriever needs at least one document")
        self._bm25s = require("bm25s", "bm25")
        try:
            stemmer_mod = require("Stemmer", "bm25")
            self._stemmer: Any = stemmer_mod.Stemmer("english")
        except ImportError:
            logger.info("PyStemmer is not installed: BM25 runs without stemming")
            self._stemmer = None
        self.docs = list(docs)
        tokens = self._tokenize([d.text for d in self.docs])
        self._index = self._bm25s.BM25(k1=k1, b=b, method="lucene")
        self._index.index(tokens, show_progress=False)

    def _tokenize(self, texts: list[str]) -> Any:
        return self._bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)

    def retrieve(self, query: str, k: int = 100) -> list[Candidate]:
        """The top ``k`` documents for ``query``, best first, with ``retrieval_score`` set."""
        return self.retrieve_many([query], k)[0]

    def retrieve_many(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        k = min(k, len(self.docs))
        ids, scores = self._index.retrieve(self._tokenize(list(queries)), k=k, show_progress=False)
        out = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            hits = [
                Candidate(
                    text=self.docs[i].text,
                    id=self.docs[i].id,
                    metadata=self.docs[i].metadata,
                    retrieval_score=float(s),
                )
                for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)
                if s > 0
            ]
            out.append(hits)
        return out
