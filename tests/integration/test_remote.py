"""Cohere and rerank-server backends against real HTTP servers on 127.0.0.1 (tests/rerank_server.py)."""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
import socket
import threading

import cohere
import httpx
import pytest
from deps import dev
from local_servers import RerankServer, overlap

from rerankers_plugins import (
    BackendError,
    Candidate,
    CohereScorer,
    ConfigError,
    RemoteScorer,
    arerank,
    rerank,
)
from rerankers_plugins.errors import DeadlineExceeded
from rerankers_plugins.scorers._aio import DEFAULT_DEADLINE_FACTOR
from rerankers_plugins.scorers.retry import RetryPolicy, parse_retry_after

KEY = "sk-test-DO-NOT-LEAK-1234"
DOCS = ["apple pie with cinnamon", "red apple", "banana bread", "red sports car", "green apple tree", "pear"]
QUERY = "red apple"
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05)
KINDS = ["tei", "v1", "cohere"]


def make(kind: str, url: str, **kw):
    kw.setdefault("retry", FAST)
    if kind == "cohere":
        return CohereScorer("rerank-v3.5", api_key=KEY, base_url=url, **kw)
    return RemoteScorer(url, protocol=kind, model="bge-reranker", api_key=KEY, **kw)


def expected_order(docs=DOCS, query=QUERY):
    return [d for _, _, d in sorted((-overlap(query, d), i, d) for i, d in enumerate(docs))]


@pytest.fixture
def server():
    with RerankServer() as s:
        yield s


@pytest.fixture
def closed_port_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def assert_no_loss(result, docs=DOCS):
    assert sorted(s.text for s in result) == sorted(docs)


@pytest.mark.parametrize("kind", KINDS)
def test_results_mapped_by_index_not_position(server, kind):
    scorer = make(kind, server.url)
    scores = scorer.score(QUERY, DOCS)
    assert scores == [overlap(QUERY, d) for d in DOCS]  # the server answered sorted by score
    out = rerank(QUERY, DOCS, scorer)
    assert [s.text for s in out] == expected_order()
    assert out[0].details["scale"] == "relevance"
    sent = server.requests[-1]
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    if kind == "tei":
        assert sent["path"] == "/rerank"
        assert sent["body"] == {"query": QUERY, "texts": DOCS, "raw_scores": False, "truncate": True}
    elif kind == "v1":
        assert sent["path"] == "/v1/rerank"
        assert sent["body"] == {
            "query": QUERY,
            "documents": DOCS,
            "top_n": len(DOCS),
            "model": "bge-reranker",
        }
    else:
        assert sent["path"] == "/v2/rerank"
        assert sent["body"]["model"] == "rerank-v3.5" and sent["body"]["top_n"] == len(DOCS)


@pytest.mark.parametrize("kind", KINDS)
async def test_async_matches_sync(server, kind):
    scorer = make(kind, server.url)
    out = await arerank(QUERY, DOCS, scorer, top_n=3)
    assert [s.text for s in out] == expected_order()[:3]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_server_answering_only_its_top_k_is_an_error_keep_order_handles(server, kind, caplog):
    """No document is scored by a guess: indices missing from the answer are a BackendError that
    names them, and the usual fallback passes every candidate through, marked."""
    server.faults.append(("top", 4))
    missing = sorted(sorted(range(len(DOCS)), key=lambda i: (-overlap(QUERY, DOCS[i]), i))[4:])
    with pytest.raises(
        BackendError, match=rf"returned 4 of 6 results: no score for index {missing[0]}, {missing[1]}"
    ):
        make(kind, server.url).score(QUERY, DOCS)
    assert len(server.requests) == 1  # not retried
    cands = [Candidate(d, id=str(i), retrieval_score=10.0 - i) for i, d in enumerate(DOCS)]
    fallback = make(kind, server.url, on_error="keep_order")
    server.faults.append(("top", 4))
    with caplog.at_level(logging.WARNING):
        sync = rerank(QUERY, cands, fallback)
    server.faults.append(("top", 4))
    asy = await arerank(QUERY, cands, fallback)
    for out in (sync, asy):
        assert [s.id for s in out] == [c.id for c in cands]
        assert all(s.details["fallback"] == "keep_order" and not s.details["reranked"] for s in out)
        assert "no score for index" in out[0].details["error"]
        assert all(s.score != 0.0 for s in out)  # the retrieval scores, not a guessed 0.0
    assert "on_error='keep_order'" in caplog.text


def test_client_side_batches_merge_by_index(server):
    scorer = RemoteScorer(server.url, protocol="tei", batch_size=4)
    docs = [f"doc {i} red" if i % 3 else f"doc {i} red apple" for i in range(10)]
    assert scorer.score(QUERY, docs) == [overlap(QUERY, d) for d in docs]
    assert sorted(len(r["body"]["texts"]) for r in server.requests) == [2, 4, 4]  # concurrent batches
    cohere = CohereScorer(api_key=KEY, base_url=server.url, batch_size=3)
    assert cohere.score(QUERY, docs) == [overlap(QUERY, d) for d in docs]
    assert sorted(len(r["body"]["documents"]) for r in server.requests[3:]) == [1, 3, 3, 3]  # concurrent


@pytest.mark.parametrize("kind", KINDS)
def test_429_with_retry_after_then_success(server, kind, caplog):
    server.faults.append(("status", 429, {"Retry-After": "0.3"}))
    with caplog.at_level(logging.WARNING):
        out = rerank(QUERY, DOCS, make(kind, server.url))
    assert "retrying in 0.30 s" in caplog.text  # Retry-After honoured over the 10 ms backoff
    assert [s.text for s in out] == expected_order()
    assert len(server.requests) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_500_three_times_then_success(server, kind, caplog):
    server.faults.extend([("status", 500), ("status", 502), ("status", 503)])
    with caplog.at_level(logging.WARNING):
        out = rerank(QUERY, DOCS, make(kind, server.url))
    assert [s.text for s in out] == expected_order()
    assert len(server.requests) == 4
    assert caplog.text.count("retrying in") == 3


@pytest.mark.parametrize("kind", KINDS)
def test_hang_longer_than_timeout(server, kind):
    server.faults.extend([("hang", 3.0), ("hang", 3.0)])
    scorer = make(kind, server.url, timeout=0.5, retry=RetryPolicy(attempts=2, initial=0.01))
    with pytest.raises(BackendError, match=r"(?i)timeout|timed out"):
        scorer.score(QUERY, DOCS)
    assert len(server.requests) == 2  # each attempt gave up on the timeout; none waited for the server


@pytest.mark.parametrize("kind", KINDS)
def test_hang_then_success_is_retried(server, kind):
    server.faults.append(("hang", 2.0))
    out = rerank(QUERY, DOCS, make(kind, server.url, timeout=0.5))
    assert [s.text for s in out] == expected_order()


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_is_not_retried(server, kind):
    server.faults.append(("malformed",))
    with pytest.raises(BackendError):
        make(kind, server.url).score(QUERY, DOCS)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["drop_index_key", "duplicate"])
def test_missing_or_repeated_index_is_an_error(server, kind, fault):
    server.faults.append((fault,))
    with pytest.raises(BackendError):
        make(kind, server.url).score(QUERY, DOCS)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_other_4xx_not_retried(server, kind):
    server.faults.append(("status", 400))
    with pytest.raises(BackendError, match="400"):
        make(kind, server.url).score(QUERY, DOCS)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_connection_refused(closed_port_url, kind):
    scorer = make(kind, closed_port_url, retry=RetryPolicy(attempts=2, initial=0.01))
    with pytest.raises(BackendError, match=r"(?i)connect"):
        scorer.score(QUERY, DOCS)


@pytest.mark.parametrize("kind", KINDS)
async def test_keep_order_fallback_returns_every_candidate(closed_port_url, kind, caplog):
    scorer = make(kind, closed_port_url, retry=RetryPolicy(attempts=2, initial=0.01), on_error="keep_order")
    cands = [Candidate(d, id=str(i), retrieval_score=10.0 - i) for i, d in enumerate(DOCS)]
    with caplog.at_level(logging.WARNING):
        sync = rerank(QUERY, cands, scorer, threshold=0.9)
        asy = await arerank(QUERY, cands, scorer, top_n=4)
    assert [s.id for s in sync] == [str(i) for i in range(6)]
    assert [s.id for s in asy] == ["0", "1", "2", "3"]
    assert all(s.details["fallback"] == "keep_order" for s in sync)
    assert sync[0].score == 10.0
    assert "on_error='keep_order'" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_api_key_never_in_logs_reprs_or_errors(server, kind, caplog):
    server.faults.extend([("status", 500), ("status", 500), ("status", 401)])
    scorer = make(kind, server.url)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
        scorer.score(QUERY, DOCS)
    assert KEY not in caplog.text
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in repr(scorer) and KEY not in str(vars(scorer))
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_keys_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    monkeypatch.setenv("RERANK_API_KEY", KEY)
    CohereScorer(base_url=server.url).score(QUERY, DOCS)
    RemoteScorer(server.url).score(QUERY, DOCS)
    assert [r["headers"]["Authorization"] for r in server.requests] == [f"Bearer {KEY}"] * 2
    monkeypatch.delenv("COHERE_API_KEY")
    with pytest.raises(ConfigError, match="COHERE_API_KEY"):
        CohereScorer()


def test_bad_options():
    with pytest.raises(ConfigError, match="protocol"):
        RemoteScorer("http://x", protocol="grpc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="base_url"):
        RemoteScorer("x:8080")
    with pytest.raises(ConfigError, match="on_error"):
        RemoteScorer("http://x", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"batch_size must be in 1\.\.1000"):
        CohereScorer(api_key=KEY, batch_size=5000)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            RemoteScorer("http://x", batch_size=bad)
        with pytest.raises(ConfigError, match="max_concurrency"):
            CohereScorer(api_key=KEY, max_concurrency=bad)
    with pytest.raises(ConfigError, match="max_length"):
        CohereScorer(api_key=KEY, max_length=0)
    for bad in (0, -1.0, float("nan"), float("inf"), "30"):
        with pytest.raises(ConfigError, match="timeout"):
            RemoteScorer("http://x", timeout=bad)


def test_cohere_old_option_names_still_work_with_a_future_warning(server, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY", KEY)  # an unpickled scorer reads its key again
    with pytest.warns(FutureWarning, match=r"max_documents_per_request=\.\.\.\) is now batch_size="):
        old = CohereScorer(api_key=KEY, base_url=server.url, max_documents_per_request=4)
    with pytest.warns(FutureWarning, match=r"max_tokens_per_doc=\.\.\.\) is now max_length="):
        old_length = CohereScorer(api_key=KEY, base_url=server.url, max_tokens_per_doc=128)
    assert (old.batch_size, old_length.max_length) == (4, 128)
    assert old.init_args()[1]["batch_size"] == 4  # described, copied and pickled under the new name
    assert pickle.loads(pickle.dumps(old)).batch_size == 4
    assert old.score(QUERY, DOCS) == [overlap(QUERY, d) for d in DOCS]
    assert sorted(len(r["body"]["documents"]) for r in server.requests) == [2, 4]
    old_length.score(QUERY, DOCS)
    assert server.requests[-1]["body"]["max_tokens_per_doc"] == 128  # the API's name on the wire
    with pytest.raises(ConfigError, match=r"pass batch_size= only"):
        CohereScorer(api_key=KEY, batch_size=3, max_documents_per_request=3)
    with pytest.raises(ConfigError, match=r"pass max_length= only"):
        CohereScorer(api_key=KEY, max_length=3, max_tokens_per_doc=3)


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None and parse_retry_after({"Retry-After": "soon"}) is None


QUERIES = [f"topic{i} apple" for i in range(200)]


def corpus_for(i: int) -> list[str]:
    return [f"doc about topic{i} apple", f"doc about topic{(i + 1) % 200}", "unrelated text", f"topic{i}"]


@pytest.mark.parametrize(
    "kind",
    [pytest.param("tei", marks=pytest.mark.slow), pytest.param("v1", marks=pytest.mark.slow), "cohere"],
)
async def test_200_concurrent_requests_through_both_adapters(kind):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    with RerankServer(delay=0.01) as server:
        scorer = make(kind, server.url, **({"max_concurrency": 8} if kind != "cohere" else {}))
        lc = RerankCompressor(scorer=scorer, top_n=1)
        li = RerankPostprocessor(scorer=scorer, top_n=1)

        async def one(i: int):
            docs = corpus_for(i)
            if i % 2:
                out = await lc.acompress_documents([Document(page_content=d) for d in docs], QUERIES[i])
                return out[0].page_content
            nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in docs]
            got = await li.apostprocess_nodes(nodes, query_str=QUERIES[i])
            return got[0].node.get_content()

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), timeout=60)
    assert results == [f"doc about topic{i} apple" for i in range(200)]  # no cross-talk
    assert len(server.requests) == 200
    if kind != "cohere":
        assert server.max_in_flight <= 8  # bounded connections


def test_conveniences_build_the_backends(server):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode
    from pydantic import SecretStr

    from rerankers_plugins.integrations.langchain import CohereRerank, RemoteRerank
    from rerankers_plugins.integrations.llama_index import CohereRerank as LICohere
    from rerankers_plugins.integrations.llama_index import RemoteRerank as LIRemote

    lc = CohereRerank(api_key=KEY, base_url=server.url, top_n=2)
    assert KEY not in repr(lc)
    docs = [Document(page_content=d) for d in DOCS]
    assert [d.page_content for d in lc.compress_documents(docs, QUERY)] == expected_order()[:2]
    remote = RemoteRerank(base_url=server.url, protocol="v1", model="m", api_key=SecretStr(KEY), top_n=1)
    assert remote.compress_documents(docs, QUERY)[0].page_content == "red apple"
    nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS]
    assert LIRemote(base_url=server.url, top_n=1).postprocess_nodes(nodes, query_str=QUERY)[0].score == 1.0
    assert LICohere(api_key=KEY, base_url=server.url).class_name() == "CohereRerank"
    assert all(r["headers"].get("Authorization", f"Bearer {KEY}") == f"Bearer {KEY}" for r in server.requests)


def test_async_scorer_survives_new_event_loops(server):
    """asyncio.run per call creates a new loop each time; each gets its own live client."""
    scorer = RemoteScorer(server.url, protocol="v1", retry=FAST)
    for _ in range(3):
        out = asyncio.run(arerank(QUERY, DOCS, scorer, top_n=1))
        assert out[0].text == "red apple"
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrap", ["threshold", "cached", "cascade"])
async def test_keep_order_falls_back_inside_strategies(closed_port_url, kind, wrap, caplog):
    from rerankers_plugins import CachedScorer, Cascade, FakeScorer, Stage, Threshold

    scorer = make(kind, closed_port_url, retry=RetryPolicy(attempts=1, initial=0.01), on_error="keep_order")
    pipeline = {
        "threshold": lambda: Threshold(scorer, absolute=0.9),
        "cached": lambda: CachedScorer(scorer),
        "cascade": lambda: Cascade([Stage(scorer, keep=4, name="server"), Stage(FakeScorer(), keep=2)]),
    }[wrap]()
    cands = [Candidate(d, id=str(i), retrieval_score=10.0 - i) for i, d in enumerate(DOCS)]
    with caplog.at_level(logging.WARNING):
        sync = rerank(QUERY, cands, pipeline)
        asy = await arerank(QUERY, cands, pipeline)
    expected = {"threshold": ["0", "1", "2", "3", "4", "5"], "cached": ["0", "1", "2", "3", "4", "5"]}
    # in the cascade the server's fallback keeps the first-stage order, then the second stage reranks
    expected["cascade"] = ["1", "0"]
    assert [s.id for s in sync] == [s.id for s in asy] == expected[wrap]
    assert "on_error='keep_order'" in caplog.text
    if wrap != "cascade":
        assert all(s.details["fallback"] == "keep_order" and not s.details["reranked"] for s in sync)


# -- one deadline for the whole call, whatever the client -------------------------------------------


TRICKLE = ("trickle", 0.05, 1.5)  # a byte every 50 ms for 1.5 s: no read ever times out


def finish_abandoned_calls() -> None:
    """Join the worker threads of injected sync SDK calls that a deadline stopped waiting for
    (each ends once the trickling server sends the rest), so their sockets are closed here."""
    for thread in threading.enumerate():
        if thread.name.startswith("rerankers-plugins-sdk"):
            thread.join(timeout=30)


@pytest.mark.parametrize(
    "client", ["injected sync", "injected sync, async call", "injected async", "base_url"]
)
def test_deadline_bounds_cohere_whatever_the_client(server, client):
    sync_pool, async_pool = httpx.Client(), httpx.AsyncClient()
    kw: dict = {"deadline": 0.3, "timeout": 5.0, "retry": FAST}
    if client.startswith("injected sync"):
        kw["client"] = cohere.ClientV2(api_key=KEY, base_url=server.url, httpx_client=sync_pool)
    elif client == "injected async":
        kw["async_client"] = cohere.AsyncClientV2(api_key=KEY, base_url=server.url, httpx_client=async_pool)
    else:
        kw.update(api_key=KEY, base_url=server.url)
    strict = CohereScorer(**kw)
    fallback = CohereScorer(**kw, on_error="keep_order")
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]

    async def on_one_loop():
        try:
            with pytest.raises(DeadlineExceeded):
                await strict.ascore(QUERY, DOCS)
            return await arerank(QUERY, cands, fallback)
        finally:
            await async_pool.aclose()

    server.faults.extend([TRICKLE] * 2)
    try:
        if client == "injected sync":
            with pytest.raises(DeadlineExceeded):
                strict.score(QUERY, DOCS)
            out = rerank(QUERY, cands, fallback)
        else:
            out = asyncio.run(on_one_loop())
    finally:
        finish_abandoned_calls()
        sync_pool.close()
    assert [s.id for s in out] == [c.id for c in cands]
    assert all(s.details["fallback"] == "keep_order" for s in out)
    assert "deadline" in out[0].details["error"]


@pytest.mark.parametrize("kind", [*KINDS, "cohere injected"])
def test_a_default_deadline_bounds_every_call(server, kind):
    """No ``deadline=``: the call is still bounded (DEFAULT_DEADLINE_FACTOR times the timeout),
    though a trickling server never lets one read reach the timeout."""
    pool = httpx.Client()
    if kind == "cohere injected":
        client = cohere.ClientV2(api_key=KEY, base_url=server.url, httpx_client=pool)
        scorer = CohereScorer(client=client, timeout=0.2, retry=FAST)
    else:
        scorer = make(kind, server.url, timeout=0.2)
    assert scorer.deadline == DEFAULT_DEADLINE_FACTOR * 0.2
    server.faults.append(("trickle", 0.05, 3.0))
    try:
        with pytest.raises(DeadlineExceeded):
            scorer.score(QUERY, DOCS)
    finally:
        finish_abandoned_calls()
        pool.close()
    assert make(kind.split()[0], server.url).deadline == DEFAULT_DEADLINE_FACTOR * 30.0
    assert make(kind.split()[0], server.url, deadline=7.0).deadline == 7.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_tiny_timeout_raises_deadline_exceeded(server, kind):
    scorer = make(
        kind, server.url, timeout=0.001, retry=RetryPolicy(attempts=50, initial=0.001, max_wait=0.001)
    )
    with pytest.raises(DeadlineExceeded):
        scorer.score(QUERY, DOCS)


# -- copies of a cache --------------------------------------------------------------------------------


def test_cached_scorer_pickles_and_deep_copies_onto_the_same_file(server, tmp_path, monkeypatch):
    from langchain_core.documents import Document

    from rerankers_plugins import CachedScorer, Threshold
    from rerankers_plugins.integrations.langchain import RerankCompressor

    monkeypatch.setenv("RERANK_API_KEY", KEY)  # a copy of a RemoteScorer reads its key again
    cached = CachedScorer(RemoteScorer(server.url, retry=FAST), path=tmp_path / "scores.sqlite")
    first = cached.score(QUERY, DOCS)
    copies = [pickle.loads(pickle.dumps(cached)), copy.deepcopy(cached), copy.copy(cached)]
    for other in copies:
        assert other is not cached and other._lock is not cached._lock and other._db is not cached._db
        assert (other.path, other.max_entries, other.timeout) == (
            cached.path,
            cached.max_entries,
            cached.timeout,
        )
        assert other.identity == cached.identity and other.score(QUERY, DOCS) == first
    sent, misses = len(server.requests), [c.misses for c in copies]
    later = ["a red apple added later", "pear and apple"]
    cached.score(QUERY, later)  # stored by the original after the copies were made
    assert [c.score(QUERY, later) for c in copies] == [[overlap(QUERY, d) for d in later]] * 3
    assert len(server.requests) == sent + 1  # the copies found them in the shared file
    assert [c.misses for c in copies] == misses  # hits, every one

    for holder in (
        Threshold(cached, absolute=0.4),
        RerankCompressor(scorer=cached, top_n=2),
    ):
        for again in (pickle.loads(pickle.dumps(holder)), copy.deepcopy(holder)):
            if isinstance(again, RerankCompressor):
                docs = [Document(page_content=d) for d in DOCS]
                assert [d.page_content for d in again.compress_documents(docs, QUERY)] == expected_order()[:2]
            else:
                assert [s.text for s in rerank(QUERY, DOCS, again, top_n=2)] == expected_order()[:2]
    assert len(server.requests) == sent + 1  # every copy scored from the file


def test_the_http_log_filter_forgets_a_scorers_credentials_with_it():
    """The httpx log filter keeps a URL's credentials for as long as a scorer holding them lives,
    not for the life of the process; a second scorer with the same URL keeps them hidden."""
    import gc

    from rerankers_plugins._secret import _HTTPX_FILTER

    url = "http://user:pw-forget-me-42@127.0.0.1:9/"
    first, second = RemoteScorer(url), RemoteScorer(url)
    assert "pw-forget-me-42" in {s.get_secret_value() for s in _HTTPX_FILTER.secrets}
    del first
    gc.collect()
    assert "pw-forget-me-42" in {s.get_secret_value() for s in _HTTPX_FILTER.secrets}
    del second
    gc.collect()
    assert "pw-forget-me-42" not in {s.get_secret_value() for s in _HTTPX_FILTER.secrets}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # a one-letter password that also stands in the scheme and the host
        ("http://u:p@127.0.0.1:9/rerank", "http://u:***@127.0.0.1:9/rerank"),
        ("https://token@tei.example/v1?api_key=t&model=m", "https://***@tei.example/v1?api_key=***&model=m"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        # an empty password: the user name is the secret (as url_secrets reads it), not shown
        ("http://tok-42:@127.0.0.1:9", "http://***@127.0.0.1:9"),
    ],
)
def test_a_url_is_shown_with_its_credentials_masked_where_they_stand(url, shown):
    scorer = RemoteScorer(url)
    assert scorer.base_url == shown
    assert shown in repr(scorer)
    assert "p@" not in repr(scorer) and "api_key=t" not in repr(scorer) and "tok-42" not in repr(scorer)


NESTED = """
import asyncio, gc, os, sys
sys.path.insert(0, {tests!r})
import nest_asyncio
from local_servers import RerankServer
from rerankers_plugins import CohereScorer, RemoteScorer

def open_files():
    return len(os.listdir("/proc/self/fd"))

async def main():
    nest_asyncio.apply()  # as LlamaIndex's notebooks do
    with RerankServer() as server:
        scorers = [RemoteScorer(server.url), CohereScorer("rerank-v3.5", api_key="k", base_url=server.url)]
        for scorer in scorers:
            scorer.score("red apple", ["red apple pie", "a bank"])  # each scorer's first client
        gc.collect()
        before = open_files()
        for _ in range(5):
            for scorer in scorers:
                assert scorer.score("red apple", ["red apple pie", "a bank"])[0] == 1.0
        gc.collect()
        print(before, open_files())

asyncio.run(main())
"""


def test_sync_calls_inside_a_nest_asyncio_loop_close_their_loops_and_connections(tmp_path):
    # nest_asyncio replaces asyncio.run with one that never closes its loop, and its loops do not
    # track async generators: every sync call left a loop and a connection open (10 -> 35 open
    # files over 5 calls) and printed "Exception ignored" tracebacks at exit. In a process of its
    # own: nest_asyncio patches asyncio for good.
    import subprocess
    import sys
    from pathlib import Path

    dev("nest_asyncio")
    script = tmp_path / "nested.py"
    script.write_text(NESTED.format(tests=str(Path(__file__).resolve().parents[1])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Exception ignored" not in done.stderr and "Event loop is closed" not in done.stderr
    before, after = map(int, done.stdout.split())
    assert after <= before, (before, after)
