"""LlamaIndex adapter: a ``BaseNodePostprocessor`` over any scorer.

    engine = index.as_query_engine(
        similarity_top_k=50,
        node_postprocessors=[RerankPostprocessor(scorer=CrossEncoderScorer("cross-encoder/ms-marco-MiniLM-L-6-v2"), top_n=5)],
    )

Returns new ``NodeWithScore`` objects whose ``score`` is the rerank score; the caller's
``NodeWithScore`` objects and nodes are never modified. With ``include_details`` (default) each
returned node is a shallow copy whose metadata also holds ``retrieval_score`` and ``rerank``
(original rank, model, scale); both keys are excluded from what the LLM and the embedder read.
Emits ``ReRankStartEvent`` / ``ReRankEndEvent`` through LlamaIndex instrumentation and a
``RERANKING`` event through the callback manager.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from rerankers_plugins._optional import require

require("llama_index.core", "llama-index")

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.integrations._base import RerankAdapter, copy_metadata
from rerankers_plugins.integrations._options import ConvenienceAdapter, conveniences
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy, leaf_nodes
from rerankers_plugins.pipeline.rerank import RerankOptions, arerank_with, rerank_with
from rerankers_plugins.types import Candidate, Scored, thaw

__all__ = ["RerankPostprocessor", "retriever_candidates"]  # and the registry's conveniences, added below

dispatcher = get_dispatcher(__name__)

_DETAIL_KEYS = ("retrieval_score", "rerank")


def _candidate(node: NodeWithScore, id: str | None, metadata_mode: MetadataMode) -> Candidate:
    return Candidate(
        text=node.node.get_content(metadata_mode=metadata_mode),
        id=id,
        metadata=node.node.metadata,
        retrieval_score=node.score if node.score is not None and math.isfinite(node.score) else None,
    )


def retriever_candidates(
    retriever: BaseRetriever, *, id_key: str | None = None, metadata_mode: MetadataMode = MetadataMode.EMBED
) -> Callable[[str], list[Candidate]]:
    """A LlamaIndex retriever as a first stage for ``tune`` and the evaluation: a function that
    calls ``retrieve`` once per query and returns its nodes as Candidates, in its order. A node's
    id is the id of the document it came from (``ref_doc_id``: ``Document(id_=...)`` of the corpus),
    else its own ``node_id``, or ``metadata[id_key]``; its retrieval score is ``NodeWithScore.score``;
    its text is what :class:`RerankPostprocessor` reads (``metadata_mode``)."""

    def node_id(n: NodeWithScore) -> str | None:
        if id_key is not None:
            value = n.node.metadata.get(id_key)
            return None if value is None else str(value)
        return n.node.ref_doc_id or n.node.node_id

    def retrieve(query: str) -> list[Candidate]:
        return [_candidate(n, node_id(n), metadata_mode) for n in retriever.retrieve(query)]

    return retrieve


class RerankPostprocessor(RerankAdapter, BaseNodePostprocessor):
    """Rerank retrieved nodes with ``scorer`` and keep the best ``top_n`` (default 2, as
    LlamaIndex's ``SentenceTransformerRerank``; None keeps all).

    Each node becomes a ``Candidate`` with its text, node id, metadata and retrieval score
    (``NodeWithScore.score``), so metadata and retrieval signals work as in LangChain.

    The model reads ``node.get_content(metadata_mode=metadata_mode)`` (EMBED by default, as
    LlamaIndex's own rerankers do; the text alone, NONE, by default when the scorer has a
    ``document_template``, which then decides what metadata the model reads). Sorting, ``top_n`` and ``threshold`` follow
    :func:`rerankers_plugins.rerank` exactly.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    top_n: int | None = Field(default=2, description="Keep at most this many nodes; None keeps all.")
    metadata_mode: MetadataMode | None = Field(
        default=None,
        description="Which metadata the model reads along with the node text; None (default): EMBED, "
        "or under a scorer with a document_template the text alone (NONE: the template decides).",
    )
    include_details: bool = Field(
        default=True,
        description="Node copies whose metadata also holds retrieval_score and rerank details "
        "(hidden from the LLM and embedder); False: node copies without them. Never the caller's nodes.",
    )

    @classmethod
    def _accept(cls, scorer: Any) -> ScorerLike:
        if isinstance(scorer, BaseNodePostprocessor):
            raise ConfigError(
                f"{cls.__name__} wraps a scorer, not another postprocessor ({type(scorer).__name__}): pass its "
                "model instead, e.g. CrossEncoderRerank(model=...) for a SentenceTransformerRerank's model"
            )
        return super()._accept(scorer)

    @classmethod
    def class_name(cls) -> str:
        return cls.__name__

    def _query(self, query_bundle: QueryBundle | None) -> str:
        if query_bundle is None:
            raise ConfigError(
                f"{self.class_name()} needs a query: call postprocess_nodes(nodes, query_str=...) "
                "or use it inside a query engine"
            )
        return query_bundle.query_str

    def _candidates(self, nodes: list[NodeWithScore]) -> list[Candidate]:
        return [_candidate(n, n.node.node_id, self._text_mode()) for n in nodes]

    def _text_mode(self) -> MetadataMode:
        """``metadata_mode`` when set; unset, EMBED (as LlamaIndex's own rerankers), or under a
        scorer with a document template the node text alone (NONE): the template decides which
        metadata the model reads, once (a dict round trip keeps it unset)."""
        if self.metadata_mode is not None:
            return self.metadata_mode
        if self.scorer is None:
            return MetadataMode.EMBED
        templated = any(leaf.template is not None for leaf in leaf_nodes(as_strategy(self.scorer)))
        return MetadataMode.NONE if templated else MetadataMode.EMBED

    def _results(self, nodes: list[NodeWithScore], ranked: list[Scored]) -> list[NodeWithScore]:
        out = []
        for s in ranked:
            src = nodes[s.details["original_rank"]]
            node = src.node.model_copy()
            node.metadata = copy_metadata(src.node.metadata)
            if self.include_details:
                node.metadata["retrieval_score"] = src.score
                node.metadata["rerank"] = thaw(s.details)
                node.excluded_llm_metadata_keys = [
                    *src.node.excluded_llm_metadata_keys,
                    *(k for k in _DETAIL_KEYS if k not in src.node.excluded_llm_metadata_keys),
                ]
                node.excluded_embed_metadata_keys = [
                    *src.node.excluded_embed_metadata_keys,
                    *(k for k in _DETAIL_KEYS if k not in src.node.excluded_embed_metadata_keys),
                ]
            else:
                node.excluded_llm_metadata_keys = list(src.node.excluded_llm_metadata_keys)
                node.excluded_embed_metadata_keys = list(src.node.excluded_embed_metadata_keys)
            out.append(NodeWithScore(node=node, score=s.score))
        return out

    def _top_n(self, nodes: list[NodeWithScore]) -> int:
        """What both event systems report as top_n: at most this many nodes come back."""
        return self.top_n if self.top_n is not None else len(nodes)

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, model: str) -> None:
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self._top_n(nodes), model_name=model)
        )

    def _payload(self, nodes: list[NodeWithScore], query: str, model: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self._top_n(nodes),
        }

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, options, done):
            return done(rerank_with(query, self._candidates(nodes), options))

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, options, done):
            return done(await arerank_with(query, self._candidates(nodes), options))

    @contextlib.contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[tuple[str, RerankOptions, Callable[[list[Scored]], list[NodeWithScore]]]]:
        """The events around one call, sync or async: ReRankStartEvent and the callback manager's
        RERANKING event open; ``done(ranked)`` turns the ranking into nodes and closes the
        callback event; ReRankEndEvent follows it, as LlamaIndex's own rerankers emit them."""
        query = self._query(query_bundle)
        options = self._rerank_options()
        self._start(nodes, query_bundle, options.strategy.name)
        payload = self._payload(nodes, query, options.strategy.name)
        results: list[list[NodeWithScore]] = []
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:

            def done(ranked: list[Scored]) -> list[NodeWithScore]:
                results.append(self._results(nodes, ranked))
                event.on_end(payload={EventPayload.NODES: results[-1]})
                return results[-1]

            yield query, options, done
        if results:
            dispatcher.event(ReRankEndEvent(nodes=results[-1]))


class _Convenience(ConvenienceAdapter, RerankPostprocessor):
    """A RerankPostprocessor whose scorer is built from the convenience's own fields."""


_generated = conveniences(_Convenience, __name__)
globals().update(_generated)
__all__ += sorted(_generated)
