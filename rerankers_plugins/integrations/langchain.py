"""LangChain adapter: a ``BaseDocumentCompressor`` over any scorer.

Works wherever LangChain takes a document compressor, e.g.::

    from langchain_classic.retrievers import ContextualCompressionRetriever
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(scorer=CrossEncoderScorer("cross-encoder/ms-marco-MiniLM-L-6-v2"), top_n=5),
        base_retriever=base,
    )

Returned documents are new objects: the caller's documents and their metadata are never touched.
Each carries ``metadata["relevance_score"]`` (the convention of LangChain's Cohere reranker) and
``metadata["rerank"]`` (original rank, model, score scale).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

from rerankers_plugins._optional import require
from rerankers_plugins.integrations._options import (
    BiEncoderFields,
    CohereFields,
    ColBERTFields,
    CrossEncoderFields,
    LLMListwiseFields,
    LLMPairwiseFields,
    LLMPointwiseFields,
    RemoteFields,
    build_scorer,
)
from rerankers_plugins.pipeline.rerank import arerank, check_options, rerank
from rerankers_plugins.types import Candidate, Scored

require("langchain_core", "langchain")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from pydantic import ConfigDict, Field  # noqa: E402

__all__ = [
    "BiEncoderRerank",
    "CohereRerank",
    "ColBERTRerank",
    "CrossEncoderRerank",
    "LLMListwiseRerank",
    "LLMPairwiseRerank",
    "LLMPointwiseRerank",
    "RemoteRerank",
    "RerankCompressor",
]


class RerankCompressor(BaseDocumentCompressor):
    """Rerank retrieved documents with ``scorer`` and keep the best.

    The model reads ``Document.page_content``. Sorting, ``top_n`` and ``threshold`` follow
    :func:`rerankers_plugins.rerank` exactly; a threshold off the scorer's scale is refused here,
    at construction, not at query time.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: Any = Field(description="A Scorer (score(query, texts)) or Ranker (rank(query, texts)).")
    top_n: int | None = Field(default=None, description="Keep at most this many documents; None keeps all.")
    threshold: float | None = Field(
        default=None, description="Keep documents scoring >= this, on the scorer's declared scale."
    )
    skip_empty: bool = Field(
        default=False, description="Leave documents with empty page_content out instead of scoring them."
    )

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Checked here rather than in a pydantic validator so that the ConfigError reaches the
        # caller as itself, not wrapped in a ValidationError.
        check_options(self.scorer, self.top_n, self.threshold)

    def _candidates(self, documents: Sequence[Document]) -> list[Candidate]:
        return [
            Candidate(text=d.page_content, id=d.id if d.id is not None else str(i), metadata=d.metadata)
            for i, d in enumerate(documents)
        ]

    def _documents(self, documents: Sequence[Document], ranked: list[Scored]) -> list[Document]:
        out = []
        for s in ranked:
            src = documents[s.details["original_rank"]]
            metadata = copy.deepcopy(src.metadata)
            metadata["relevance_score"] = s.score
            metadata["rerank"] = dict(s.details)
            out.append(Document(page_content=src.page_content, metadata=metadata, id=src.id))
        return out

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; returns new Documents, best first."""
        ranked = rerank(
            query,
            self._candidates(documents),
            self.scorer,
            top_n=self.top_n,
            threshold=self.threshold,
            skip_empty=self.skip_empty,
        )
        return self._documents(documents, ranked)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async rerank: model compute runs off the event loop (or natively async for API backends)."""
        ranked = await arerank(
            query,
            self._candidates(documents),
            self.scorer,
            top_n=self.top_n,
            threshold=self.threshold,
            skip_empty=self.skip_empty,
        )
        return self._documents(documents, ranked)


class _Convenience(RerankCompressor):
    """A RerankCompressor whose scorer is built from the convenience's own fields."""

    kind: ClassVar[str]
    scorer: Any = Field(default=None, description="Built from the fields below.")

    def __init__(self, **data: Any) -> None:
        super().__init__(**{**data, "scorer": build_scorer(self.kind, data)})


class CrossEncoderRerank(CrossEncoderFields, _Convenience):
    """``RerankCompressor`` over a :class:`~rerankers_plugins.CrossEncoderScorer` built from ``model``.

    ``CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L-6-v2", top_n=5, threshold=0.3)``
    """


class BiEncoderRerank(BiEncoderFields, _Convenience):
    """``RerankCompressor`` over a :class:`~rerankers_plugins.BiEncoderScorer` (cosine) built from ``model``."""


class ColBERTRerank(ColBERTFields, _Convenience):
    """``RerankCompressor`` over a :class:`~rerankers_plugins.ColBERTScorer` (MaxSim) built from ``model``.

    Document vectors are cached (in memory, and on disk with ``cache_dir``), so reranking
    candidates seen before costs one query encoding plus MaxSim.
    """


class CohereRerank(CohereFields, _Convenience):
    """``RerankCompressor`` over :class:`~rerankers_plugins.CohereScorer` (key from ``api_key`` or ``COHERE_API_KEY``)."""


class RemoteRerank(RemoteFields, _Convenience):
    """``RerankCompressor`` over a rerank server (TEI, vLLM, Infinity) through :class:`~rerankers_plugins.RemoteScorer`."""


class LLMListwiseRerank(LLMListwiseFields, _Convenience):
    """``RerankCompressor`` over :class:`~rerankers_plugins.LLMListwiseScorer` (RankGPT, sliding window; top_n only)."""


class LLMPointwiseRerank(LLMPointwiseFields, _Convenience):
    """``RerankCompressor`` over :class:`~rerankers_plugins.LLMPointwiseScorer` (each passage judged alone)."""


class LLMPairwiseRerank(LLMPairwiseFields, _Convenience):
    """``RerankCompressor`` over :class:`~rerankers_plugins.LLMPairwiseScorer` (comparisons for the top k; top_n only)."""
