"""LangChain adapter: a ``BaseDocumentCompressor`` over any scorer, ranker or strategy.

Works wherever LangChain takes a document compressor, e.g.::

    from langchain_classic.retrievers import ContextualCompressionRetriever
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(scorer=CrossEncoderScorer("cross-encoder/ms-marco-MiniLM-L-6-v2"), top_n=5),
        base_retriever=base,
    )

Each ``Document`` becomes a ``Candidate`` with its text, id, metadata and retrieval score (read
from ``metadata[retrieval_score_key]``). Returned documents are new objects: the caller's
documents and their metadata are never touched, and no two results share a nested dict. Each
carries ``metadata["relevance_score"]`` (the convention of LangChain's Cohere reranker) and
``metadata["rerank"]`` (original rank, model, scale, retrieval score, per-stage details).

The ``callbacks`` LangChain passes (the retriever run's child manager) are the run context of the
rerank: an LLM reranker's model calls appear as child runs of the retriever's run in LangSmith or
any tracer, sync and async.

The named conveniences (``CrossEncoderRerank``, ``CohereRerank``, ...) are generated from
:mod:`rerankers_plugins.registry`, one per backend that declares one.
"""

from __future__ import annotations

import asyncio
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from rerankers_plugins._optional import require

require("langchain_core", "langchain")

from langchain_core.callbacks import Callbacks
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import RunnableConfig, set_config_context
from pydantic import ConfigDict, Field

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.integrations._base import RETRIEVAL_SCORE_KEYS, RerankAdapter, copy_metadata
from rerankers_plugins.integrations._options import ConvenienceAdapter, conveniences
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.pipeline.rerank import arerank_with, rerank_with
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import Candidate, Scored, ScoreScale, thaw

__all__ = [
    "LangChainCrossEncoder",
    "RerankCompressor",
    "retriever_candidates",
]  # and the registry's conveniences, added below


class LangChainCrossEncoder(BaseScorer):
    """LangChain's own cross-encoder objects (``BaseCrossEncoder``: ``HuggingFaceCrossEncoder``,
    ``SagemakerEndpointCrossEncoder``, yours) as a scorer: ``score`` is theirs over (query, text)
    pairs. Scale LOGIT: such an object declares no scale (HuggingFaceCrossEncoder returns a
    sigmoid for one-label models and raw logits for two-label ones), so a threshold means what
    the model's numbers mean; for a declared scale use ``CrossEncoderScorer``.
    ``RerankCompressor(scorer=HuggingFaceCrossEncoder(...))`` wraps it for you."""

    scale = ScoreScale.LOGIT

    def __init__(self, model: BaseCrossEncoder) -> None:
        self.model = model
        self.name = str(getattr(model, "model_name", None) or type(model).__name__)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(x) for x in self.model.score([(query, t) for t in texts])]


def _retrieval_score(metadata: dict[str, Any], keys: str | tuple[str, ...] | None) -> float | None:
    """The first of ``keys`` in ``metadata`` that holds a finite real number, as a float."""
    for key in (keys,) if isinstance(keys, str) else keys or ():
        value = metadata.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _candidate(document: Document, id: str | None, keys: str | tuple[str, ...] | None) -> Candidate:
    return Candidate(
        text=document.page_content,
        id=id,
        metadata=document.metadata,
        retrieval_score=_retrieval_score(document.metadata, keys),
    )


def retriever_candidates(
    retriever: BaseRetriever,
    *,
    id_key: str | None = None,
    retrieval_score_key: str | tuple[str, ...] | None = RETRIEVAL_SCORE_KEYS,
) -> Callable[[str], list[Candidate]]:
    """A LangChain retriever as a first stage for ``tune`` and the evaluation: a function that
    invokes it once per query and returns its documents as Candidates, in its order. A document's
    id is ``Document.id`` (or ``metadata[id_key]``); its retrieval score is read as
    :class:`RerankCompressor` reads it (``retrieval_score_key``)."""

    def retrieve(query: str) -> list[Candidate]:
        docs = retriever.invoke(query)
        return [
            _candidate(d, d.id if id_key is None else _id(d.metadata.get(id_key)), retrieval_score_key)
            for d in docs
        ]

    return retrieve


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def _wrap(scorer: ScorerLike | BaseCrossEncoder) -> ScorerLike:
    """LangChain's own cross-encoder object wrapped as a Scorer; anything else as it is."""
    return LangChainCrossEncoder(scorer) if isinstance(scorer, BaseCrossEncoder) else scorer


class RerankCompressor(RerankAdapter, BaseDocumentCompressor):
    """Rerank retrieved documents with ``scorer`` and keep the best ``top_n`` (default 3, as
    LangChain's ``CrossEncoderReranker``; None keeps all).

    The model reads ``Document.page_content``. Sorting, ``top_n`` and ``threshold`` follow
    :func:`rerankers_plugins.rerank` exactly; a threshold off the scorer's scale is refused here,
    at construction (or assignment), not at query time. LangChain's own cross-encoder objects
    (``HuggingFaceCrossEncoder``, ...) are taken as the scorer too.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retrieval_score_key: str | tuple[str, ...] | None = Field(
        default=RETRIEVAL_SCORE_KEYS,
        description="Metadata key(s) holding the first stage's score, tried in order (the first real "
        "number wins); None: documents carry no retrieval score.",
    )

    @classmethod
    def _accept(cls, scorer: Any) -> ScorerLike:
        if isinstance(scorer, BaseCrossEncoder):
            return LangChainCrossEncoder(scorer)
        if isinstance(scorer, BaseDocumentCompressor):
            raise ConfigError(
                f"{cls.__name__} wraps a scorer, not another compressor ({type(scorer).__name__}): pass its "
                "model instead, e.g. CrossEncoderRerank(model=...) or RerankCompressor(scorer=HuggingFaceCrossEncoder(...))"
            )
        return super()._accept(scorer)

    def _candidates(self, documents: Sequence[Document]) -> list[Candidate]:
        return [
            _candidate(d, d.id if d.id is not None else str(i), self.retrieval_score_key)
            for i, d in enumerate(documents)
        ]

    def _documents(self, documents: Sequence[Document], ranked: list[Scored]) -> list[Document]:
        out = []
        for s in ranked:
            src = documents[s.details["original_rank"]]
            metadata = copy_metadata(src.metadata)
            metadata["relevance_score"] = s.score
            metadata["rerank"] = thaw(s.details)
            out.append(Document(page_content=src.page_content, metadata=metadata, id=src.id))
        return out

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        **kwargs: Any,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; returns new Documents, best first. ``callbacks``
        become the run context of any LangChain model the scorer calls; other keyword arguments
        are accepted and ignored, as LangChain's own compressors do."""
        with set_config_context(RunnableConfig(callbacks=callbacks)) as context:
            ranked = context.run(rerank_with, query, self._candidates(documents), self._rerank_options())
        return self._documents(documents, ranked)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        **kwargs: Any,
    ) -> Sequence[Document]:
        """Async rerank: model compute runs off the event loop (or natively async for API backends)."""
        with set_config_context(RunnableConfig(callbacks=callbacks)) as context:
            call = arerank_with(query, self._candidates(documents), self._rerank_options())
            ranked = await asyncio.create_task(call, context=context)
        return self._documents(documents, ranked)


class _Convenience(ConvenienceAdapter, RerankCompressor):
    """A RerankCompressor whose scorer is built from the convenience's own fields."""

    def _built(self, data: dict[str, Any]) -> ScorerLike:
        model = data.get("model")
        if not isinstance(model, BaseCrossEncoder):
            return super()._built(data)
        # LangChain's own cross-encoder object: wrapped, nothing loaded
        if self.kind != "cross-encoder":
            raise ConfigError(
                f"{type(self).__name__} builds its model from a name; pass the object as RerankCompressor(scorer=...)"
            )
        extra = sorted(
            k
            for k in data
            if k in type(self).model_fields and k not in RerankCompressor.model_fields and k != "model"
        )
        if extra:
            raise ConfigError(
                f"{type(self).__name__}(model=<{type(model).__name__}>) loads nothing itself, so {extra} cannot apply"
            )
        scorer = LangChainCrossEncoder(model)
        data["model"] = scorer.name
        return scorer


_generated = conveniences(_Convenience, __name__)
globals().update(_generated)
__all__ += sorted(_generated)
