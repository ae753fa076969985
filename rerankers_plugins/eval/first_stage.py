"""BM25 first stage over an in-memory corpus (bm25s): what a RAG chain's retriever would return."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers.lexical import BM25Tokens
from rerankers_plugins.types import Candidate

__all__ = ["BM25Retriever"]

logger = logging.getLogger(__name__)


class BM25Retriever:
    """Lucene-variant BM25 (k1=1.2, b=0.75), tokenized as :class:`~rerankers_plugins.scorers.lexical.BM25Scorer` tokenizes
    (:class:`~rerankers_plugins.scorers.lexical.BM25Tokens`: English stopwords, Snowball stemming
    unless ``stemming=False``).

    ``docs`` are Candidates (their ``text`` is indexed, ``id`` and ``metadata`` are carried to the
    results, ``retrieval_score`` is set to the BM25 score).
    """

    def __init__(
        self, docs: Sequence[Candidate], *, k1: float = 1.2, b: float = 0.75, stemming: bool = True
    ) -> None:
        if not docs:
            raise ConfigError("BM25Retriever needs at least one document")
        self._tokens = BM25Tokens(stemming=stemming)
        self.docs = list(docs)
        self._index = require("bm25s", "bm25").BM25(k1=k1, b=b, method="lucene")
        self._index.index(self._tokens.ids([d.text for d in self.docs]), show_progress=False)

    def retrieve(self, query: str, k: int = 100) -> list[Candidate]:
        """The top ``k`` documents for ``query``, best first, with ``retrieval_score`` set."""
        return self.retrieve_many([query], k)[0]

    def retrieve_many(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        k = min(k, len(self.docs))
        ids, scores = self._index.retrieve(self._tokens.ids(queries), k=k, show_progress=False)
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
