"""RerankCompressor inside real LangChain retrievers and pipelines."""

from __future__ import annotations

import asyncio
import copy

import pytest
from deps import dev
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

from rerankers_plugins import ConfigError, FakeScorer, rerank
from rerankers_plugins.integrations.langchain import (
    BiEncoderRerank,
    CrossEncoderRerank,
    RerankCompressor,
)

DOCS = [
    ("Paris is the capital of France.", "geo"),
    ("The red apple fell from the tree.", "food"),
    ("Apple pie with red apples and cinnamon.", "food"),
    ("Berlin is the capital of Germany.", "geo"),
    ("Bananas are yellow.", "food"),
]


@pytest.fixture
def documents():
    return [
        Document(page_content=t, metadata={"topic": topic, "nested": {"n": i}}, id=f"doc{i}")
        for i, (t, topic) in enumerate(DOCS)
    ]


@pytest.fixture
def base_retriever(documents):
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=16))
    store.add_documents(documents)
    return store.as_retriever(search_kwargs={"k": len(documents)})


def test_contextual_compression_retriever_reranks(base_retriever, documents):
    compressor = RerankCompressor(scorer=FakeScorer(), top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    out = retriever.invoke("red apple tree")
    assert [d.page_content for d in out] == [
        "The red apple fell from the tree.",
        "Apple pie with red apples and cinnamon.",
    ]
    assert out[0].metadata["relevance_score"] == 1.0
    assert out[1].metadata["relevance_score"] == pytest.approx(2 / 3)
    assert out[0].metadata["rerank"]["model"] == "fake-overlap"
    assert out[0].metadata["topic"] == "food"
    assert out[0].id == "doc1"


async def test_async_path_matches_sync(base_retriever):
    compressor = RerankCompressor(scorer=FakeScorer(), top_n=3, threshold=0.4)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    sync = retriever.invoke("capital of France")
    asy = await retriever.ainvoke("capital of France")
    assert [d.page_content for d in sync] == [d.page_content for d in asy]
    assert [d.metadata["relevance_score"] for d in asy] == sorted(
        (d.metadata["relevance_score"] for d in asy), reverse=True
    )
    assert all(d.metadata["relevance_score"] >= 0.4 for d in asy)


async def test_concurrent_async_calls_do_not_cross_talk(documents):
    compressor = RerankCompressor(scorer=FakeScorer(), top_n=1)
    queries = ["Paris France", "Berlin Germany", "yellow bananas", "cinnamon pie"] * 5
    results = await asyncio.gather(*(compressor.acompress_documents(documents, q) for q in queries))
    expected = {
        "Paris France": "doc0",
        "Berlin Germany": "doc3",
        "yellow bananas": "doc4",
        "cinnamon pie": "doc2",
    }
    assert [r[0].id for r in results] == [expected[q] for q in queries]


def test_caller_documents_never_mutated(documents):
    snapshot = copy.deepcopy(documents)
    out = RerankCompressor(scorer=FakeScorer(), top_n=None).compress_documents(documents, "red apple")
    assert documents == snapshot
    assert all("relevance_score" not in d.metadata for d in documents)
    out[0].metadata["nested"]["n"] = 99
    assert documents[1].metadata["nested"]["n"] == 1
    assert len(out) == len(documents)  # no top_n: every document comes back


def test_scores_match_core_rerank(documents):
    out = RerankCompressor(scorer=FakeScorer(), top_n=None).compress_documents(documents, "capital")
    core = rerank("capital", [d.page_content for d in documents], FakeScorer())
    assert [(d.page_content, d.metadata["relevance_score"]) for d in out] == [(s.text, s.score) for s in core]


def test_document_compressor_pipeline(documents):
    pipeline = DocumentCompressorPipeline(
        transformers=[
            RerankCompressor(scorer=FakeScorer(), top_n=3),
            RerankCompressor(scorer=FakeScorer(name="second"), top_n=1),
        ]
    )
    out = pipeline.compress_documents(documents, "Berlin capital Germany")
    assert [d.id for d in out] == ["doc3"]
    assert out[0].metadata["rerank"]["model"] == "second"


def test_bad_options_refused_at_construction():
    with pytest.raises(ConfigError, match="outside the probability scale"):
        RerankCompressor(scorer=FakeScorer(), threshold=3.0)
    with pytest.raises(ConfigError, match="top_n"):
        RerankCompressor(scorer=FakeScorer(), top_n=0)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        RerankCompressor(scorer=FakeScorer(), topn=3)


def test_empty_documents_and_empty_query(documents):
    compressor = RerankCompressor(scorer=FakeScorer())
    assert compressor.compress_documents([], "q") == []
    with pytest.raises(ConfigError, match="query is empty"):
        compressor.compress_documents(documents, "")


def test_cross_encoder_convenience(tiny_ce_dir, documents):
    compressor = CrossEncoderRerank(model=str(tiny_ce_dir), top_n=2, threshold=0.0, dtype="float32")
    out = compressor.compress_documents(documents, "capital of France")
    scores = compressor.scorer.score("capital of France", [d.page_content for d in documents])
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(sorted(scores, reverse=True)[:2])
    raw = CrossEncoderRerank(model=str(tiny_ce_dir), activation=None, dtype="float32")
    assert raw.scorer.scale.value == "logit"
    with pytest.raises(ConfigError, match="not both"):
        CrossEncoderRerank(model=str(tiny_ce_dir), scorer=FakeScorer())


def test_bi_encoder_convenience(tiny_bi_dir, documents):
    compressor = BiEncoderRerank(model=str(tiny_bi_dir), top_n=1, dtype="float32")
    out = compressor.compress_documents(documents, "Bananas are yellow.")
    assert out[0].id == "doc4"
    assert out[0].metadata["rerank"]["scale"] == "similarity"


class _Runs:
    """A callback handler recording every run's id, parent and kind, as a tracer sees them."""

    def __new__(cls):
        from langchain_core.callbacks import BaseCallbackHandler

        class Recorder(BaseCallbackHandler):
            def __init__(self) -> None:
                self.runs: list[tuple[str, object, object]] = []

            def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kw):
                self.runs.append(("retriever", run_id, parent_run_id))

            def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):
                self.runs.append(("chat_model", run_id, parent_run_id))

        return Recorder()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llm_reranker_calls_are_child_runs_of_the_retriever(base_retriever, mode):
    """LangChain passes callbacks to compress_documents; the reranker's chat-model calls must
    hang under the retriever's run, not start runs of their own."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from rerankers_plugins import LLMPointwiseScorer

    llm = FakeListChatModel(responses=["yes", "no", "no", "yes", "no"] * 4)
    compressor = RerankCompressor(scorer=LLMPointwiseScorer(llm, max_concurrency=3), top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    recorder = _Runs()
    config = {"callbacks": [recorder]}
    if mode == "sync":
        out = retriever.invoke("capital", config=config)
    else:
        out = asyncio.run(retriever.ainvoke("capital", config=config))
    assert len(out) == 2
    retrievers = [r for r in recorder.runs if r[0] == "retriever"]
    chats = [r for r in recorder.runs if r[0] == "chat_model"]
    outer = [r for r in retrievers if r[2] is None]
    assert len(outer) == 1 and len(chats) == len(DOCS)
    assert {parent for _, _, parent in chats} == {outer[0][1]}


def test_compress_documents_accepts_extra_keyword_arguments(documents):
    compressor = RerankCompressor(scorer=FakeScorer(), top_n=1)
    out = compressor.compress_documents(documents, "red apple tree", callbacks=None, run_name="x")
    assert out[0].page_content == "The red apple fell from the tree."
    out = asyncio.run(compressor.acompress_documents(documents, "red apple tree", extra=1))
    assert out[0].page_content == "The red apple fell from the tree."


def test_langchains_own_cross_encoder_objects_are_scorers(documents, tiny_ce_dir):
    """The LangChain cross-encoder how-to's object, HuggingFaceCrossEncoder, as ours: scorer=...
    and CrossEncoderRerank(model=...) both score with it; its numbers come back as they are."""
    dev("langchain_community")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's own sunset notice
        from langchain_community.cross_encoders import HuggingFaceCrossEncoder

    hf = HuggingFaceCrossEncoder(model_name=str(tiny_ce_dir), model_kwargs={"device": "cpu"})
    expected = sorted(
        (
            (float(s), d.page_content)
            for s, d in zip(
                list(hf.score([("capital", d.page_content) for d in documents])), documents, strict=True
            )
        ),
        reverse=True,
    )
    for compressor in (RerankCompressor(scorer=hf, top_n=2), CrossEncoderRerank(model=hf, top_n=2)):
        out = compressor.compress_documents(documents, "capital")
        assert [d.page_content for d in out] == [t for _, t in expected[:2]]
        assert [d.metadata["relevance_score"] for d in out] == pytest.approx([s for s, _ in expected[:2]])
        assert out[0].metadata["rerank"]["scale"] == "logit"
    with pytest.raises(ConfigError, match="cannot apply"):
        CrossEncoderRerank(model=hf, max_length=64)


def test_conveniences_take_the_model_first_and_peer_option_names(tiny_bi_dir, tiny_ce_dir, documents):
    bi = BiEncoderRerank(str(tiny_bi_dir), top_n=1)
    assert bi.model == str(tiny_bi_dir) and len(bi.compress_documents(documents, "capital")) == 1
    # the names LangChain's HuggingFaceCrossEncoder users bring
    ce = CrossEncoderRerank(model_name=str(tiny_ce_dir), model_kwargs={"device": "cpu"}, top_k=2)
    assert ce.model == str(tiny_ce_dir) and ce.device == "cpu" and ce.model_kwargs is None and ce.top_n == 2
    with pytest.raises(ConfigError, match="at most one positional"):
        BiEncoderRerank(str(tiny_bi_dir), 3)
    with pytest.raises(ConfigError, match="both positionally"):
        BiEncoderRerank(str(tiny_bi_dir), model=str(tiny_bi_dir))
    with pytest.raises(ConfigError, match="no 'user_agent' option: pass a configured client"):
        RerankCompressor(scorer=FakeScorer(), user_agent="x")


def test_retrieval_signal_behind_a_store_that_gives_no_scores(base_retriever):
    """InMemoryVectorStore (like FAISS) puts no score in metadata: the retrieval signal is the
    retriever's own order, and the fusion runs."""
    from rerankers_plugins import Hybrid, Signal

    fused = Hybrid([Signal(FakeScorer(), 0.5), Signal("retrieval", 0.5)])
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(scorer=fused, top_n=None), base_retriever=base_retriever
    )
    first_stage = [d.page_content for d in base_retriever.invoke("red apple tree")]
    out = retriever.invoke("red apple tree")
    assert sorted(d.page_content for d in out) == sorted(first_stage)
    signals = {d.page_content: d.metadata["rerank"]["signals"]["retrieval"] for d in out}
    assert signals == {t: -float(i) for i, t in enumerate(first_stage)}
