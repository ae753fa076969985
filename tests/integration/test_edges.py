"""The edges users hit: event loops, deadlines, cancelled siblings, bad answers, secrets,
pickling and inputs that used to crash deep inside a library. One named test per case."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import pickle
import threading
import time
from collections.abc import Sequence

import pytest
from local_servers import RerankServer, overlap

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    CachedScorer,
    Candidate,
    CohereScorer,
    ConfigError,
    FakeScorer,
    Hybrid,
    LLMPointwiseScorer,
    RemoteScorer,
    ScoreScale,
    Signal,
    arerank,
    rerank,
)
from rerankers_plugins.errors import DeadlineExceeded
from rerankers_plugins.scorers.retry import RetryPolicy, parse_retry_after

KEY = "sk-edge-DO-NOT-LEAK-9876"
QUERY = "red apple"
DOCS = ["apple pie", "red apple", "banana bread", "red car", "green apple tree", "pear"]
FAST = RetryPolicy(attempts=3, initial=0.01, max_wait=0.02)


def make(kind: str, url: str, **kw):
    kw.setdefault("retry", FAST)
    if kind == "cohere":
        return CohereScorer("rerank-v3.5", api_key=KEY, base_url=url, **kw)
    return RemoteScorer(url, protocol=kind, model="m", api_key=KEY, **kw)


KINDS = ["tei", "v1", "cohere"]


@pytest.fixture
def server():
    with RerankServer() as s:
        yield s


def expected(docs=DOCS):
    return sorted(docs, key=lambda d: -overlap(QUERY, d))


# -- 1. event loops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_one_scorer_across_many_asyncio_runs(server, kind):
    scorer = make(kind, server.url)
    for _ in range(5):
        out = asyncio.run(arerank(QUERY, DOCS, scorer))
        assert [s.text for s in out] == expected()
    assert [s.text for s in rerank(QUERY, DOCS, scorer)] == expected()  # and sync, in between


@pytest.mark.parametrize("kind", KINDS)
def test_sync_call_inside_a_running_loop(server, kind):
    scorer = make(kind, server.url)

    async def inside():
        return scorer.score(QUERY, DOCS)  # a sync call from async code (LangChain's sync path)

    assert asyncio.run(inside()) == [overlap(QUERY, d) for d in DOCS]


# -- 2. one deadline per call -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "fault",
    [("trickle", 0.25), ("hang", 5.0), ("status", 429, {"Retry-After": "120"})],
    ids=["trickle", "hang", "retry-after-120"],
)
def test_deadline_bounds_the_whole_call(server, kind, fault):
    # each fault alone would outlast the deadline (a trickle never trips the 1 s read timeout, a hang
    # outlasts it, Retry-After asks for 120 s): DeadlineExceeded says the deadline ended the call
    server.faults.extend([fault] * 3)
    scorer = make(kind, server.url, timeout=1.0, deadline=0.4, retry=RetryPolicy(attempts=3, initial=0.2))
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]
    with pytest.raises(DeadlineExceeded, match="deadline"):
        scorer.score(QUERY, DOCS)
    fallback = make(kind, server.url, timeout=1.0, deadline=0.4, on_error="keep_order")
    server.faults.extend([fault] * 3)
    out = asyncio.run(arerank(QUERY, cands, fallback))
    assert [s.id for s in out] == [c.id for c in cands]  # nothing lost: the fallback keeps every one
    assert all(s.details["fallback"] == "keep_order" for s in out)
    assert "DeadlineExceeded" in out[0].details["error"]


def test_deadline_is_validated():
    for bad in (0, -1, math.inf, "1", True):
        with pytest.raises(ConfigError, match="deadline"):
            RemoteScorer("http://127.0.0.1:9", deadline=bad)


# -- 3. failed async batches cancel their siblings --------------------------------------------------


def test_a_failed_batch_cancels_its_siblings(server):
    server.faults.extend([("status", 400)] + [("status", 503)] * 50)
    scorer = RemoteScorer(
        server.url, batch_size=1, max_concurrency=6, retry=RetryPolicy(attempts=20, initial=0.2, max_wait=0.2)
    )
    with pytest.raises(BackendError, match="400"):
        asyncio.run(scorer.ascore(QUERY, DOCS))
    time.sleep(1.0)  # siblings that kept retrying (every 0.2 s) would have sent more by now
    assert len(server.requests) <= len(DOCS)  # one first attempt per batch at most, no retries


# -- 4. bad answers ---------------------------------------------------------------------------------


def test_retry_after_nan_is_ignored():
    assert parse_retry_after({"Retry-After": "nan"}) is None
    assert parse_retry_after({"Retry-After": "inf"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_nan_is_retried_with_backoff(server, kind):
    server.faults.append(("status", 503, {"Retry-After": "nan"}))
    assert [s.text for s in rerank(QUERY, DOCS, make(kind, server.url))] == expected()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (("score", math.inf), "non-finite"),
        (("score", 7.5), "outside its declared relevance scale"),
        (("score", "0.5"), "non-numeric"),
        (("empty",), "no results"),
    ],
    ids=["infinity", "off-scale", "numeric-string", "empty"],
)
def test_bad_answers_are_backend_errors_that_keep_order_handles(server, kind, fault, message):
    server.faults.append(fault)
    with pytest.raises(BackendError, match=message):
        rerank(QUERY, DOCS, make(kind, server.url, retry=RetryPolicy(attempts=1)), threshold=0.5)
    server.faults.append(fault)
    out = rerank(
        QUERY,
        DOCS,
        make(kind, server.url, retry=RetryPolicy(attempts=1), on_error="keep_order"),
        threshold=0.5,
    )
    assert [s.text for s in out] == DOCS  # every document, in order, none cut by the threshold


class Floats(BaseScorer):
    scale = ScoreScale.PROBABILITY

    def __init__(self, values, name="floats"):
        self.values, self.name = values, name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.values)


def test_ranker_returning_floats_or_strings_is_a_backend_error():
    class R:
        name = "r"

        def __init__(self, out):
            self.out = out

        def rank(self, query, texts):
            return self.out

    for bad in ([2.7, 0.2, 1.9], ["2", "0", "1"], [0, 0, 1]):
        with pytest.raises(BackendError, match="not a permutation"):
            rerank(QUERY, ["a", "b", "c"], R(bad))


def test_off_scale_scores_within_float_error_are_clamped():
    out = rerank(QUERY, ["a", "b"], Floats([1.0000004, -0.0000002]))
    assert [s.score for s in out] == [1.0, 0.0]
    with pytest.raises(BackendError, match="outside its declared probability scale"):
        rerank(QUERY, ["a", "b"], Floats([1.2, 0.1]))


# -- 5. secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url_form", ["userinfo", "query"])
@pytest.mark.parametrize("kind", KINDS)
def test_credentials_in_base_url_are_redacted_everywhere(server, kind, url_form, caplog):
    host = server.url.removeprefix("http://")
    url = f"http://user:{KEY}@{host}" if url_form == "userinfo" else f"{server.url}?api_key={KEY}"
    server.faults.extend([("status", 500), ("status", 401)])
    scorer = make(kind, url)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
        scorer.score(QUERY, DOCS)
    assert KEY not in str(info.value) and KEY not in caplog.text
    assert KEY not in repr(scorer) and KEY not in scorer.name and KEY not in str(vars(scorer))
    assert KEY not in str(scorer.fingerprint())
    out = rerank(QUERY, DOCS, make(kind, url))
    assert all(KEY not in str(dict(s.details)) for s in out)
    assert [s.text for s in out] == expected()  # the credentials still reach the server
    if url_form == "query":
        assert server.requests[-1]["query"] == f"api_key={KEY}"
    with pytest.raises(TypeError, match="credentials"):
        pickle.dumps(scorer)


@pytest.mark.parametrize("kind", KINDS)
def test_pickling_keeps_settings_not_the_key(server, kind, monkeypatch):
    scorer = make(kind, server.url, deadline=5.0)
    blob = pickle.dumps(scorer)
    assert KEY.encode() not in blob
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    monkeypatch.setenv("RERANK_API_KEY", KEY)
    again = pickle.loads(blob)
    assert again.deadline == 5.0 and again.name == scorer.name
    assert again.score(QUERY, DOCS) == scorer.score(QUERY, DOCS)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"  # read from the environment


def test_pickling_adapters_never_breaks_the_live_object(server):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankers_plugins.integrations import langchain as lc
    from rerankers_plugins.integrations import llama_index as li

    post = li.RerankPostprocessor(scorer=RemoteScorer(server.url, api_key=KEY), top_n=2)
    comp = lc.RerankCompressor(scorer=RemoteScorer(server.url, api_key=KEY), top_n=2)
    conv = li.RemoteRerank(base_url=server.url, api_key=KEY, top_n=2)
    for obj in (post, comp, conv):
        blob = pickle.dumps(obj)
        assert KEY.encode() not in blob
        assert obj.scorer is not None
    nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS]
    assert [n.node.get_content() for n in post.postprocess_nodes(nodes, query_str=QUERY)] == expected()[:2]
    assert [
        d.page_content for d in comp.compress_documents([Document(d) for d in DOCS], QUERY)
    ] == expected()[:2]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(lc.RerankCompressor(scorer=Hybrid([Signal(lambda c: 1.0, 1.0)])))


# -- 6. inputs that used to crash deep inside libraries --------------------------------------------


def test_uncopyable_metadata_is_shared_not_copied():
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankers_plugins.integrations import langchain as lc
    from rerankers_plugins.integrations import llama_index as li

    lock = threading.Lock()
    docs = [Document(d, metadata={"lock": lock, "tags": ["x"]}) for d in DOCS]
    out = lc.RerankCompressor(scorer=FakeScorer(), top_n=2).compress_documents(docs, QUERY)
    assert out[0].metadata["lock"] is lock and out[0].metadata["tags"] is not docs[1].metadata["tags"]
    assert "relevance_score" not in docs[1].metadata
    nodes = [NodeWithScore(node=TextNode(text=d, metadata={"lock": lock}), score=0.0) for d in DOCS]
    got = li.RerankPostprocessor(scorer=FakeScorer()).postprocess_nodes(nodes, query_str=QUERY)
    assert got[0].node.metadata["lock"] is lock and "rerank" not in nodes[1].node.metadata


def test_lone_surrogates_are_scored_not_crashed(tiny_ce, caplog):
    texts = ["red apple\ud800", "banana"]
    with caplog.at_level(logging.WARNING):
        out = rerank("red apple\udfff", texts, CachedScorer(tiny_ce))
    assert sorted(s.text for s in out) == sorted(texts)  # the caller's texts come back unchanged
    assert "surrogates" in caplog.text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Hybrid([Signal(FakeScorer(), 1.0)], rrf_k=-1), "rrf_k"),
        (lambda: Hybrid([Signal(FakeScorer(), 1.0)], rrf_k="60"), "rrf_k"),
        (lambda: Hybrid([Signal(FakeScorer(), math.inf)]), "weight"),
        (lambda: rerank(QUERY, ["a"], _Percent()), "percent"),
        (lambda: rerank(QUERY, None, FakeScorer()), "candidates"),
    ],
    ids=["rrf-negative", "rrf-string", "weight-inf", "scale-percent", "candidates-none"],
)
def test_bad_options_name_the_argument(build, message):
    with pytest.raises((ConfigError, TypeError), match=message):
        build()


class _Percent(BaseScorer):
    scale = "percent"  # type: ignore[assignment]
    name = "percent-scorer"

    def score(self, query, texts):
        return [50.0] * len(texts)


def test_llm_logprobs_that_are_not_numbers_score_unparsable():
    from rerankers_plugins.scorers.llm import Reply

    scorer = LLMPointwiseScorer(lambda messages: "?", unparsable_score=0.25)
    for lps in ({"Yes": -math.inf, "No": -math.inf}, {"Yes": math.nan}, {"yes": "x", "no": math.nan}):
        score, info = scorer.judge(Reply(text="?", first_token_logprobs=lps))
        assert score == 0.25 and not info["parsed"]
    score, _ = scorer.judge(Reply(text="Yes", first_token_logprobs={"Yes": -0.1, "No": -math.inf}))
    assert score == 1.0


def test_nothing_mutated_by_a_failing_backend(server):
    cands = [Candidate(d, id=str(i), metadata={"m": [i]}) for i, d in enumerate(DOCS)]
    before = copy.deepcopy(cands)
    server.faults.extend([("status", 500)] * 5)
    rerank(QUERY, cands, make("tei", server.url, on_error="keep_order"))
    assert cands == before


def test_keys_with_plus_and_percent_are_redacted():
    scorer = RemoteScorer("http://127.0.0.1:9/?api_key=abc+def/ghi&subscription-key=x%2By")
    shown = f"{scorer!r} {scorer.name} {scorer.fingerprint()}"
    for leaked in ("abc+def", "abc def", "def/ghi", "x%2By", "x+y"):
        assert leaked not in shown


def test_copies_of_a_scorer_keep_their_key(server):
    scorer = copy.deepcopy(make("tei", server.url))
    scorer.score(QUERY, DOCS)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_convenience_never_shows_base_url_credentials():
    from rerankers_plugins.integrations import llama_index as li

    conv = li.RemoteRerank(base_url=f"http://user:{KEY}@127.0.0.1:9")
    assert KEY not in repr(conv) and KEY not in str(conv.model_dump())
