"""RerankPostprocessor inside a real LlamaIndex query engine, with MockLLM and mock embeddings."""

from __future__ import annotations

import copy

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import EventPayload
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from rerankers_plugins import ConfigError, FakeScorer
from rerankers_plugins.integrations.llama_index import CrossEncoderRerank, RerankPostprocessor

TEXTS = [
    "Paris is the capital of France.",
    "The red apple fell from the tree.",
    "Apple pie with red apples and cinnamon.",
    "Berlin is the capital of Germany.",
    "Bananas are yellow.",
]


class Recorder(BaseEventHandler):
    events: list

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs):
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append(event)


@pytest.fixture(scope="module")
def index():
    # LlamaIndex's global Settings are set for these tests and put back after them
    before = Settings._llm, Settings._embed_model
    Settings.llm = MockLLM()
    Settings.embed_model = MockEmbedding(embed_dim=8)
    docs = [
        Document(text=t, metadata={"i": i}, excluded_embed_metadata_keys=["i"]) for i, t in enumerate(TEXTS)
    ]
    yield VectorStoreIndex.from_documents(docs)
    Settings._llm, Settings._embed_model = before


@pytest.fixture
def recorder():
    handler = Recorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def nodes():
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"k": [i]}), score=1.0 - i / 10)
        for i, t in enumerate(TEXTS)
    ]


def test_query_engine_uses_reranked_nodes(index, recorder):
    engine = index.as_query_engine(
        similarity_top_k=5, node_postprocessors=[RerankPostprocessor(scorer=FakeScorer(), top_n=2)]
    )
    response = engine.query("red apple tree")
    got = [n.node.get_content() for n in response.source_nodes]
    assert got == ["The red apple fell from the tree.", "Apple pie with red apples and cinnamon."]
    assert [n.score for n in response.source_nodes] == pytest.approx([1.0, 2 / 3])
    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 1
    assert starts[0].model_name == "fake-overlap" and starts[0].top_n == 2
    assert len(starts[0].nodes) == 5 and len(ends[0].nodes) == 2


async def test_async_query_engine(index, recorder):
    engine = index.as_query_engine(
        similarity_top_k=5, node_postprocessors=[RerankPostprocessor(scorer=FakeScorer(), top_n=1)]
    )
    response = await engine.aquery("capital of Germany")
    assert [n.node.get_content() for n in response.source_nodes] == ["Berlin is the capital of Germany."]
    assert sum(isinstance(e, ReRankEndEvent) for e in recorder.events) == 1


def test_new_nodes_and_no_mutation():
    src = nodes()
    snapshot = copy.deepcopy(src)
    out = RerankPostprocessor(scorer=FakeScorer(), top_n=3).postprocess_nodes(src, query_str="capital France")
    assert [n.node.node_id for n in src] == [n.node.node_id for n in snapshot]
    assert [n.score for n in src] == [n.score for n in snapshot]
    assert [n.node.metadata for n in src] == [n.node.metadata for n in snapshot]
    top = out[0]
    assert top.node.node_id == "n0" and top.score == 1.0
    assert top.node.metadata["retrieval_score"] == 1.0
    assert top.node.metadata["rerank"]["original_rank"] == 0
    # details stay out of what the LLM and the embedder read
    assert "rerank" not in top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "retrieval_score" not in top.node.get_content(metadata_mode=MetadataMode.EMBED)
    top.node.metadata["k"].append(7)
    assert src[0].node.metadata["k"] == [0]


def test_include_details_false_returns_new_nodes_without_details():
    src = nodes()
    out = RerankPostprocessor(scorer=FakeScorer(), include_details=False).postprocess_nodes(
        src, query_str="yellow"
    )
    assert out[0].node is not src[4].node and out[0] is not src[4]
    assert out[0].node.node_id == "n4" and out[0].node.metadata == {"k": [4]}
    out[0].node.metadata["k"].append(9)
    out[0].node.excluded_llm_metadata_keys.append("k")
    assert src[4].node.metadata == {"k": [4]} and src[4].node.excluded_llm_metadata_keys == []
    assert src[4].score == pytest.approx(0.6)


class SpanRecorder(BaseEventHandler):
    """The span each ReRank event and each RERANKING callback event was emitted in."""

    events: list

    @classmethod
    def class_name(cls) -> str:
        return "SpanRecorder"

    def handle(self, event, **kwargs):
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append((type(event).__name__, event.span_id, getattr(event, "top_n", None)))


@pytest.mark.parametrize("mode", ["query", "aquery"])
def test_rerank_events_sit_in_the_postprocessor_span_and_agree_on_top_n(index, mode):
    import asyncio

    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    handler = SpanRecorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    debug = LlamaDebugHandler()
    post = RerankPostprocessor(scorer=FakeScorer(), top_n=None)
    before = Settings.callback_manager
    Settings.callback_manager = CallbackManager([debug])
    try:
        engine = index.as_query_engine(similarity_top_k=4, node_postprocessors=[post])
        if mode == "query":
            engine.query("red apple tree")
        else:
            asyncio.run(engine.aquery("red apple tree"))
    finally:
        Settings.callback_manager = before
        root.event_handlers.remove(handler)
    (start, start_span, top_n), (end, end_span, _) = handler.events
    assert (start, end) == ("ReRankStartEvent", "ReRankEndEvent")
    assert "postprocess_nodes" in start_span and start_span == end_span
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    assert top_n == pairs[0][0].payload[EventPayload.TOP_K] == 4


def test_query_required_and_options_checked():
    post = RerankPostprocessor(scorer=FakeScorer())
    with pytest.raises(ConfigError, match="needs a query"):
        post.postprocess_nodes(nodes())
    with pytest.raises(ConfigError, match="outside"):
        RerankPostprocessor(scorer=FakeScorer(), threshold=-1)
    assert RerankPostprocessor.class_name() == "RerankPostprocessor"
    assert post.postprocess_nodes([], query_str="x") == []


def test_threshold_keeps_only_confident_nodes():
    out = RerankPostprocessor(scorer=FakeScorer(), threshold=0.5).postprocess_nodes(
        nodes(), query_str="red apple"
    )
    assert {n.node.node_id for n in out} == {"n1", "n2"}


def test_cross_encoder_convenience_in_engine(index, tiny_ce_dir):
    post = CrossEncoderRerank(model=str(tiny_ce_dir), top_n=3, dtype="float32")
    assert post.class_name() == "CrossEncoderRerank"
    engine = index.as_query_engine(similarity_top_k=5, node_postprocessors=[post])
    response = engine.query("capital of France")
    scores = [n.score for n in response.source_nodes]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_peer_option_names_and_positional_model(tiny_bi_dir):
    from rerankers_plugins.integrations.llama_index import BiEncoderRerank

    post = BiEncoderRerank(str(tiny_bi_dir), keep_retrieval_score=False, top_n=1)
    assert post.model == str(tiny_bi_dir) and post.include_details is False
    out = post.postprocess_nodes(nodes(), query_str="capital")
    assert len(out) == 1 and "retrieval_score" not in out[0].node.metadata
    with pytest.raises(ConfigError, match="choice_select_prompt"):
        RerankPostprocessor(scorer=FakeScorer(), choice_select_prompt="x")


def test_llm_rerank_options_carry_over_to_the_listwise_convenience():
    """LLMRerank(llm=..., choice_select_prompt=..., choice_batch_size=5, top_n=2) swapped for ours:
    the same prompt reaches the LLM, batches of 5 are the window (it slides by half of it), and
    its answers are read as LLMRerank's 'Doc: n, Relevance: r' lines."""
    from llama_index.core.prompts import PromptTemplate

    from rerankers_plugins.integrations.llama_index import LLMListwiseRerank

    seen = []

    def llm(messages):
        seen.append(messages)
        return "Doc: 2, Relevance: 9\nDoc: 3, Relevance: 7"  # the rest: not relevant, left out

    prompt = PromptTemplate("Documents:\n{context_str}\nQuestion: {query_str}\nAnswer:\n")
    post = LLMListwiseRerank(
        llm=llm,
        choice_select_prompt=prompt,
        choice_batch_size=3,
        top_n=2,
        format_node_batch_fn=None,  # LLMRerank's defaults: nothing to translate
        parse_choice_select_answer_fn=None,
    )
    assert (post.scorer.window, post.scorer.step, post.scorer.answer_format) == (3, 1, "choice_select")
    plain = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = post.postprocess_nodes(plain, query_str="red apple")
    assert len(out) == 2 and len(seen) == 3  # windows (2, 5), (1, 4), (0, 3)
    assert seen[0] == [
        {
            "role": "user",
            "content": f"Documents:\nDocument 1:\n{TEXTS[2]}\n\nDocument 2:\n{TEXTS[3]}\n\n"
            f"Document 3:\n{TEXTS[4]}\nQuestion: red apple\nAnswer:\n",
        }
    ]
    # a system prompt of the user's own is kept alongside (LLMRerank sends none)
    with_system = LLMListwiseRerank(llm=llm, choice_select_prompt=prompt, system_prompt="Fruit search.")
    assert with_system.scorer.messages("q", ["a"])[0] == {"role": "system", "content": "Fruit search."}


@pytest.mark.parametrize(
    ("convenience", "options", "match"),
    [
        (
            "LLMPointwiseRerank",
            {"choice_select_prompt": "{context_str} {query_str}"},
            r"no 'choice_select_prompt' option: LLMListwiseRerank\(llm=\.\.\., choice_select_prompt=\.\.\.\) takes",
        ),
        (
            "LLMListwiseRerank",
            {"choice_select_prompt": "{context_str} {query_str}", "prompt": "{query} {passages}"},
            r"pass prompt= or choice_select_prompt=, not both",
        ),
        (
            "LLMListwiseRerank",
            {"choice_select_prompt": "{context_str} {query_str} {domain}"},
            r"template variable \{domain\}",
        ),
        (
            "LLMListwiseRerank",
            {"format_node_batch_fn": lambda nodes: ""},
            r"no 'format_node_batch_fn' option: .*passage_template=",
        ),
        (
            "LLMListwiseRerank",
            {"parse_choice_select_answer_fn": lambda a, n: ([], [])},
            r"answer_format='choice_select'",
        ),
    ],
)
def test_llm_rerank_options_that_cannot_carry_over_say_what_to_pass(convenience, options, match):
    from rerankers_plugins.integrations import llama_index

    with pytest.raises(ConfigError, match=match):
        getattr(llama_index, convenience)(llm=lambda messages: "", **options)
