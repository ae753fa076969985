"""The fields both adapters share, through each adapter: what a user assigns after construction is
what the next call uses (or is refused, leaving the adapter as it was), and bad values are clear
ConfigErrors, never pydantic's wrapper and never a silent coercion."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerankers_plugins import BM25Scorer, ConfigError, FakeScorer
from rerankers_plugins.integrations.langchain import BiEncoderRerank as LCBiEncoderRerank
from rerankers_plugins.integrations.langchain import RerankCompressor
from rerankers_plugins.integrations.llama_index import BiEncoderRerank as LIBiEncoderRerank
from rerankers_plugins.integrations.llama_index import RerankPostprocessor


class ParityRanker:
    name = "parity"

    def rank(self, query, texts):
        return list(range(len(texts)))


TEXTS = ["red apple pie", "green apple", "a bank loan", "apple"]
QUERY = "red apple"


def _langchain(adapter):
    return [
        d.metadata["rerank"]["model"] for d in adapter.compress_documents([Document(t) for t in TEXTS], QUERY)
    ]


def _llama_index(adapter):
    nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in TEXTS]
    return [n.node.metadata["rerank"]["model"] for n in adapter.postprocess_nodes(nodes, QueryBundle(QUERY))]


ADAPTERS = [(RerankCompressor, _langchain), (RerankPostprocessor, _llama_index)]


@pytest.mark.parametrize(("cls", "models"), ADAPTERS, ids=["langchain", "llama_index"])
def test_an_assigned_scorer_is_the_one_the_next_call_uses(cls, models):
    adapter = cls(scorer=FakeScorer(), top_n=None)
    assert set(models(adapter)) == {"fake-overlap"}
    adapter.scorer = BM25Scorer()  # it was read once at construction: the next call still said fake-overlap
    assert set(models(adapter)) == {"bm25"}
    adapter.top_n = 1
    assert models(adapter) == ["bm25"]


@pytest.mark.parametrize(("cls", "models"), ADAPTERS, ids=["langchain", "llama_index"])
def test_an_assignment_the_scorer_refuses_leaves_the_adapter_as_it_was(cls, models):
    adapter = cls(scorer=FakeScorer(), threshold=0.5, top_n=None)
    with pytest.raises(ConfigError, match=r"threshold 2.0 is outside the probability scale"):
        adapter.threshold = 2.0
    adapter.scorer = FakeScorer("another")  # the same scale: the threshold still holds
    with pytest.raises(ConfigError, match="outside the probability scale"):
        adapter.threshold = float("inf")
    with pytest.raises(ConfigError, match="a threshold cannot apply"):
        adapter.scorer = ParityRanker()  # a ranker has no scale the threshold of 0.5 could be on
    assert adapter.threshold == 0.5 and len(models(adapter)) == 3  # 'a bank loan' is below 0.5
    with pytest.raises(ConfigError, match="top_n must be a positive int"):
        adapter.top_n = 2.5
    with pytest.raises(ConfigError, match="neither a Scorer"):
        adapter.scorer = object()
    assert isinstance(adapter.scorer, FakeScorer)


@pytest.mark.parametrize("cls", [RerankCompressor, RerankPostprocessor], ids=["langchain", "llama_index"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_n": 2.5}, "top_n must be a positive int or None, got 2.5"),
        ({"top_n": "3"}, "top_n must be a positive int or None, got '3'"),
        ({"top_n": 0}, "top_n must be >= 1"),
        ({"threshold": "0.5"}, "threshold must be a number or None, got '0.5'"),
        ({"threshold": 1.5}, "outside the probability scale"),
    ],
)
def test_bad_options_are_config_errors_not_coerced(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls(scorer=FakeScorer(), **options)


def test_a_name_or_another_frameworks_reranker_as_the_scorer_says_what_to_pass():
    with pytest.raises(
        ConfigError, match=r"scorer is a scorer object, not a name.*BiEncoderRerank\('minilm'\)"
    ):
        RerankCompressor(scorer="minilm")
    with pytest.raises(ConfigError, match="scorer is a scorer object, not a name"):
        RerankPostprocessor(scorer="minilm")
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import LLMRerank

    with pytest.raises(ConfigError, match="wraps a scorer, not another postprocessor \\(LLMRerank\\)"):
        RerankPostprocessor(scorer=LLMRerank(llm=MockLLM()))
    from langchain_core.documents import BaseDocumentCompressor

    class KeepAll(BaseDocumentCompressor):
        def compress_documents(self, documents, query, callbacks=None):
            return documents

    with pytest.raises(ConfigError, match="wraps a scorer, not another compressor \\(KeepAll\\)"):
        RerankCompressor(scorer=KeepAll())


@pytest.mark.parametrize("cls", [LCBiEncoderRerank, LIBiEncoderRerank], ids=["langchain", "llama_index"])
def test_a_conveniences_model_options_are_fixed_once_built(cls, tiny_bi_dir):
    rerank = cls(model=str(tiny_bi_dir), top_n=2)
    for name, value in (("model", "other"), ("batch_size", 8), ("scorer", FakeScorer())):
        with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{name} is fixed once the model is built"):
            setattr(rerank, name, value)
    rerank.top_n = 1  # the adapter's own fields stay assignable
    assert rerank.top_n == 1 and rerank.model == str(tiny_bi_dir)
