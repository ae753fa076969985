"""BM25 over the candidates themselves (bm25s): a lexical signal for hybrid fusion."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.templates import TemplateLike, as_template
from rerankers_plugins.types import ScoreScale

__all__ = ["BM25Scorer", "BM25Tokens", "bm25s"]

logger = logging.getLogger(__name__)


@functools.cache
def bm25s() -> Any:
    """The bm25s module (the ``bm25`` extra). Importing it sets its logger to DEBUG, so that a
    program logging at WARNING saw a DEBUG line per index built: the level it set is taken back
    (NOTSET: the program's own logging configuration decides), once, after the import."""
    module = require("bm25s", "bm25")
    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return module


class BM25Tokens:
    """The one BM25 tokenisation of the package (the scorer here and the evaluation's first stage):
    lower-cased words of two or more characters, bm25s's English stopwords removed, Snowball
    stemming (PyStemmer, in the ``bm25`` extra) unless ``stemming=False``."""

    def __init__(self, *, stemming: bool = True) -> None:
        self._bm25s = bm25s()
        self._stemmer: Any = require("Stemmer", "bm25").Stemmer("english") if stemming else None
        self.stemming = stemming

    def ids(self, texts: Sequence[str]) -> Any:
        """bm25s ``Tokenized`` ids and vocabulary of ``texts``, for indexing or retrieval."""
        return self._bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)

    def words(self, text: str) -> list[str]:
        """The terms of one text, as strings."""
        out: list[str] = self._bm25s.tokenize(
            [text], stopwords="en", stemmer=self._stemmer, show_progress=False, return_ids=False
        )[0]
        return out


class BM25Scorer(BaseScorer):
    """BM25 (Lucene variant, k1=1.2, b=0.75) of the query against the candidate list as a corpus.

    Statistics (document frequencies, average length) come from the candidates, so the score says
    how strongly a candidate matches the query's terms relative to the other candidates. English
    stopwords; Snowball stemming (:class:`BM25Tokens`). Scale LOGIT (any non-negative number).

    Args:
        k1: term-frequency saturation.
        b: length normalisation (0: none, 1: full).
        stemming: Snowball stemming of query and texts; False: exact words.
        document_template: what BM25 reads of each candidate (None: its text), as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
    """

    scale = ScoreScale.LOGIT
    pure = False  # a score depends on the other candidates (document frequencies): never cached

    def __init__(
        self,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        stemming: bool = True,
        document_template: TemplateLike | None = None,
    ) -> None:
        self.document_template = as_template(document_template)
        self._bm25s = bm25s()
        self._tokens = BM25Tokens(stemming=stemming)
        self.k1, self.b = k1, b
        self.name = "bm25"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        q = self._tokens.words(query)
        tokens = self._tokens.ids(texts)
        if not q or not any(tokens.ids):  # nothing to match, or only stopwords: no term scores anything
            return [0.0] * len(texts)
        index = self._bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        index.index(tokens, show_progress=False)
        return [float(s) for s in index.get_scores(q)]
