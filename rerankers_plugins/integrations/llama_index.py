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

import math
from collections.abc import Callable
from typing import Any, ClassVar

from rerankers_plugins._optional import require

require("llama_index.core", "llama-index")

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.integrations._options import (
    SettingsSerialized,
    build_scorer,
    conveniences,
    copy_metadata,
    peer_options,
    pickle_state,
    positional_model,
)
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.pipeline.ranking import Strategy
from rerankers_plugins.pipeline.rerank import RerankOptions, arerank_with, check_options, rerank_with
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


class RerankPostprocessor(SettingsSerialized, BaseNodePostprocessor):
    """Rerank retrieved nodes with ``scorer`` and keep the best ``top_n`` (default 2, as
    LlamaIndex's ``SentenceTransformerRerank``; None keeps all).

    Each node becomes a ``Candidate`` with its text, node id, metadata and retrieval score
    (``NodeWithScore.score``), so metadata and retrieval signals work as in LangChain.

    The model reads ``node.get_content(metadata_mode=metadata_mode)`` (EMBED by default, as
    LlamaIndex's own rerankers do). Sorting, ``top_n`` and ``threshold`` follow
    :func:`rerankers_plugins.rerank` exactly.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: ScorerLike = Field(description="A Scorer, a Ranker, or a strategy built from them.")
    top_n: int | None = Field(default=2, description="Keep at most this many nodes; None keeps all.")
    threshold: float | None = Field(
        default=None, description="Keep nodes scoring >= this, on the scorer's declared scale."
    )
    skip_empty: bool = Field(
        default=False, description="Leave nodes with empty text out instead of scoring them."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata the model reads along with the node text."
    )
    include_details: bool = Field(
        default=True,
        description="Node copies whose metadata also holds retrieval_score and rerank details "
        "(hidden from the LLM and embedder); False: node copies without them. Never the caller's nodes.",
    )
    _strategy: Strategy = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**peer_options(type(self), data))
        # Checked here rather than in a pydantic validator so that the ConfigError reaches the
        # caller as itself, not wrapped in a ValidationError.
        self._strategy = check_options(self.scorer, self.top_n, self.threshold)

    @classmethod
    def class_name(cls) -> str:
        return cls.__name__

    def __getstate__(self) -> dict[str, Any]:
        # LlamaIndex's own __getstate__ deletes unpicklable fields from the live object's dict:
        # pydantic's state, copied, instead.
        return pickle_state(self, BaseModel.__getstate__(self))

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseModel.__setstate__(self, state)
        self._strategy = check_options(self.scorer, self.top_n, self.threshold)

    def _rerank_options(self) -> RerankOptions:
        """What rerank is asked for, from the fields as they are at this call."""
        return RerankOptions(
            self._strategy, top_n=self.top_n, threshold=self.threshold, skip_empty=self.skip_empty
        )

    def _query(self, query_bundle: QueryBundle | None) -> str:
        if query_bundle is None:
            raise ConfigError(
                f"{self.class_name()} needs a query: call postprocess_nodes(nodes, query_str=...) "
                "or use it inside a query engine"
            )
        return query_bundle.query_str

    def _candidates(self, nodes: list[NodeWithScore]) -> list[Candidate]:
        return [_candidate(n, n.node.node_id, self.metadata_mode) for n in nodes]

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

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> None:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self._top_n(nodes),
                model_name=self._strategy.name,
            )
        )

    def _payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self._strategy.name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self._top_n(nodes),
        }

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._query(query_bundle)
        self._start(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            ranked = rerank_with(query, self._candidates(nodes), self._rerank_options())
            result = self._results(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: result})
        dispatcher.event(ReRankEndEvent(nodes=result))
        return result

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._query(query_bundle)
        self._start(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            ranked = await arerank_with(query, self._candidates(nodes), self._rerank_options())
            result = self._results(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: result})
        dispatcher.event(ReRankEndEvent(nodes=result))
        return result


class _Convenience(RerankPostprocessor):
    """A RerankPostprocessor whose scorer is built from the convenience's own fields."""

    kind: ClassVar[str]
    scorer: ScorerLike = Field(default=None, description="Built from the fields below.", exclude=True)  # type: ignore[assignment]

    def __init__(self, *args: Any, **data: Any) -> None:
        data = peer_options(type(self), positional_model(type(self), self.kind, args, data))
        super().__init__(**{**data, "scorer": build_scorer(self.kind, data)})


_generated = conveniences(_Convenience, __name__)
globals().update(_generated)
__all__ += sorted(_generated)
