"""Rate limits shared by every caller of a key, usage and budgets, against the loopback servers.

Time is a :class:`fake_clock.SteppedClock`: it moves only when every caller is asleep on it, so
the server stamps each arrival with exactly the time the limiter granted it, and minutes of rate
limiting take a few seconds of real time. No test sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import pickle
import threading
import time
from typing import Any

import cohere
import httpx
import pytest
from deps import dev
from fake_clock import SteppedClock, most_in_any_window, most_units_in_any_window
from local_servers import ChatServer, RerankServer, rule_answer

from rerankers_plugins import (
    BackendError,
    BudgetExceeded,
    Candidate,
    CohereScorer,
    ConfigError,
    DeadlineExceeded,
    LLMListwiseRanker,
    LLMPointwiseScorer,
    RateLimit,
    RemoteScorer,
    Usage,
    aexplain,
    explain,
    rerank,
)
from rerankers_plugins.scorers.llm import Reply
from rerankers_plugins.scorers.retry import RetryPolicy

KEY = "sk-test-rate-limits-0000"
QUERY = "red apple"
DOCS = ["apple pie", "red apple", "banana bread", "red car"]
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05)
LONG = 3600.0  # a deadline no fake wait here reaches (waits are fake seconds; the deadline is real)


class StampedServer(RerankServer):
    """A RerankServer that stamps every arrival with the fake clock and bills like the real APIs:
    Cohere ``meta.billed_units.search_units`` = ceil(documents / 100) + ``extra_units``; ``/v1``
    ``usage`` = 7 prompt tokens per document."""

    def __init__(self, clock: SteppedClock, extra_units: int = 0) -> None:
        super().__init__()
        self.clock = clock
        self.extra_units = extra_units
        self.arrivals: list[tuple[float, int, int]] = []  # (stamp, documents, units billed)

    def _respond(self, h: Any, body: dict[str, Any], fault: tuple[Any, ...] | None) -> None:
        docs = body.get("texts") or body.get("documents") or []
        billed = 0 if fault else math.ceil(len(docs) / 100) + self.extra_units
        with self._lock:
            self.arrivals.append((self.clock.monotonic(), len(docs), billed))
        super()._respond(h, body, fault)

    def answer(self, path: str, body: dict[str, Any], fault: tuple[Any, ...] | None) -> Any:
        out = super().answer(path, body, fault)
        docs = body.get("documents") or []
        if path == "/v2/rerank":
            out["meta"]["billed_units"] = {"search_units": math.ceil(len(docs) / 100) + self.extra_units}
        elif path == "/v1/rerank":
            out["usage"] = {"prompt_tokens": 7 * len(docs), "total_tokens": 7 * len(docs)}
        return out

    @property
    def stamps(self) -> list[float]:
        return [t for t, _, _ in self.arrivals]


def make(kind: str, url: str, *, key: str = KEY, **kw: Any) -> CohereScorer | RemoteScorer:
    kw.setdefault("retry", FAST)
    if kind == "cohere":
        return CohereScorer("rerank-v3.5", api_key=key, base_url=url, **kw)
    return RemoteScorer(url, protocol=kind, model="bge", api_key=key, **kw)


def docs(n: int) -> list[str]:
    return [f"red apple {i}" if i % 2 else f"pear {i}" for i in range(n)]


# -- many threads and event loops, one key ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cohere", pytest.param("v1", marks=pytest.mark.slow)])
def test_8_threads_x_3_loops_never_pass_the_limit(kind):
    clock = SteppedClock()
    rpm, upm = 10, 12
    limit = RateLimit(
        requests_per_minute=rpm, units_per_minute=upm if kind == "cohere" else None, clock=clock
    )
    errors: list[BaseException] = []
    scorers = []
    with StampedServer(clock) as server:

        def worker(i: int) -> None:
            # each thread its own scorer object: the key and URL are what share the limiter; one
            # request per call (the fake clock needs it: see fake_clock.py)
            scorer = make(kind, server.url, rate_limit=limit, deadline=LONG, batch_size=200)
            scorers.append(scorer)

            async def one(j: int) -> None:
                with clock.participant():
                    await scorer.ascore(QUERY, docs(150 if (i + j) % 4 == 0 else 20))

            async def loop() -> None:
                await asyncio.gather(one(0), one(1))

            try:
                for _ in range(3):
                    with clock.participant():
                        scorer.score(QUERY, docs(30))
                    asyncio.run(loop())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert len(server.arrivals) == 8 * 3 * 3
    assert most_in_any_window(server.stamps) == rpm  # reached, never passed
    assert clock.elapsed >= 60 * (math.ceil(72 / rpm) - 1)
    assert len({id(s._limiter) for s in scorers}) == 1
    spent = sum((s.usage for s in scorers), Usage())
    assert spent.requests == 72
    if kind == "cohere":
        assert most_units_in_any_window([(t, u) for t, _, u in server.arrivals]) <= upm
        assert spent.search_units == sum(u for _, _, u in server.arrivals)
    else:
        assert spent.input_tokens == spent.total_tokens == 7 * sum(n for _, n, _ in server.arrivals)


@pytest.mark.parametrize("kind", ["cohere", "tei"])
def test_a_429_pauses_every_caller_of_the_key(kind):
    clock = SteppedClock()
    limit = RateLimit(requests_per_minute=100, clock=clock)  # the window is not what holds them back
    errors: list[BaseException] = []
    with StampedServer(clock) as server:
        server.faults.append(("status", 429, {"Retry-After": "30"}))
        first = make(kind, server.url, rate_limit=limit, deadline=LONG)
        others = [make(kind, server.url, rate_limit=limit, deadline=LONG) for _ in range(3)]
        t0 = clock.monotonic()
        limiter = first._limiter
        assert limiter is not None

        def guarded(fn: Any) -> Any:
            def run() -> None:
                try:
                    fn()
                except BaseException as exc:
                    errors.append(exc)

            return threading.Thread(target=run)

        def sync_after_the_429(scorer: Any) -> None:
            while limiter.paused_until <= t0:  # start only once the 429 has paused the key
                time.sleep(0.001)
            scorer.score(QUERY, DOCS)

        async def two_async_after_the_429() -> None:
            while limiter.paused_until <= t0:
                await asyncio.sleep(0.001)
            await asyncio.gather(*(others[2].ascore(QUERY, DOCS) for _ in range(2)))

        participants = [clock.participant() for _ in range(5)]
        for p in participants:  # registered up front: time stands still until all of them sleep
            p.__enter__()

        def leaving(p: Any, fn: Any) -> Any:
            def run() -> None:
                try:
                    fn()
                finally:
                    p.__exit__(None, None, None)

            return run

        jobs = [
            leaving(participants[0], lambda: first.score(QUERY, DOCS)),
            leaving(participants[1], lambda: sync_after_the_429(others[0])),
            leaving(participants[2], lambda: sync_after_the_429(others[1])),
            leaving(participants[3], lambda: asyncio.run(two_async_after_the_429())),
        ]
        threads = [guarded(job) for job in jobs]
        for t in threads:
            t.start()
        participants[4].__exit__(None, None, None)  # this thread only watches
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert server.stamps[0] == t0  # the 429
    # the retry and every other caller of the key waited out the Retry-After, nothing in between
    assert sorted(server.stamps[1:]) == [t0 + 30] * 5


@pytest.mark.parametrize("kind", ["cohere", "v1"])
async def test_a_call_that_cannot_start_before_its_deadline_is_refused_unsent(kind):
    clock = SteppedClock()
    limit = RateLimit(requests_per_minute=2, clock=clock)
    with StampedServer(clock) as server:
        strict = make(kind, server.url, rate_limit=limit, deadline=5.0)
        fallback = make(kind, server.url, rate_limit=limit, deadline=5.0, on_error="keep_order")
        await strict.ascore(QUERY, DOCS)
        strict.score(QUERY, DOCS)
        with pytest.raises(DeadlineExceeded, match=r"rate limit.*not sent"):
            await strict.ascore(QUERY, DOCS)
        with pytest.raises(DeadlineExceeded, match="not sent"):
            strict.score(QUERY, DOCS)
        cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]
        out = rerank(QUERY, cands, fallback)
        assert [s.id for s in out] == ["0", "1", "2", "3"]
        assert all(s.details["fallback"] == "keep_order" for s in out)
        assert len(server.arrivals) == 2  # nothing beyond the limit was sent
        assert clock.elapsed == 0  # refused at once, not after waiting
        assert strict.usage.requests == 2


def test_a_retry_after_past_the_deadline_stops_every_caller_unsent():
    clock = SteppedClock()
    limit = RateLimit(requests_per_minute=100, clock=clock)
    with StampedServer(clock) as server:
        server.faults.append(("status", 429, {"Retry-After": "20"}))
        a = make("cohere", server.url, rate_limit=limit, deadline=10.0)
        b = make("cohere", server.url, rate_limit=limit, deadline=10.0)
        with pytest.raises(DeadlineExceeded, match="paused after an HTTP 429"):
            a.score(QUERY, DOCS)
        with pytest.raises(DeadlineExceeded, match="paused after an HTTP 429"):
            b.score(QUERY, DOCS)
        assert len(server.arrivals) == 1


def test_an_injected_sync_client_goes_through_the_limiter_too():
    clock = SteppedClock()
    with StampedServer(clock) as server, httpx.Client() as pool:
        client = cohere.ClientV2(api_key=KEY, base_url=server.url, httpx_client=pool)
        limit = RateLimit(requests_per_minute=2, clock=clock)
        scorer = CohereScorer(client=client, rate_limit=limit, deadline=LONG)
        twin = CohereScorer(client=client, rate_limit=limit)
        assert twin._limiter is scorer._limiter  # the client stands for its key
        for _ in range(3):
            scorer.score(QUERY, DOCS)
        assert server.stamps == [clock.start, clock.start, clock.start + 60]
        assert scorer.usage == Usage(requests=3, search_units=3)


# -- one limiter per key and URL -------------------------------------------------------------------------


def test_scorers_share_a_limiter_by_key_and_url_and_must_agree_on_it(monkeypatch):
    url = "http://127.0.0.1:9"
    ten = RateLimit(requests_per_minute=10)
    a = make("cohere", url, rate_limit=ten)
    assert make("cohere", url, rate_limit=RateLimit(requests_per_minute=10))._limiter is a._limiter
    assert make("cohere", url, key="sk-another-key", rate_limit=ten)._limiter is not a._limiter
    assert make("cohere", url + "/other", rate_limit=ten)._limiter is not a._limiter
    with pytest.raises(ConfigError, match=r"requests_per_minute=10.*requests_per_minute=20"):
        make("cohere", url, rate_limit=RateLimit(requests_per_minute=20))
    # an unpickled copy reads the key from the environment again: the same key, the same limiter
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    copy = pickle.loads(pickle.dumps(make("cohere", url, key=None, rate_limit=ten)))
    assert copy.rate_limit == ten and copy._limiter is a._limiter


def billed_answer(request: httpx.Request) -> httpx.Response:
    documents = json.loads(request.content)["documents"]
    results = [{"index": i, "relevance_score": 0.5} for i in range(len(documents))]
    return httpx.Response(200, json={"results": results, "meta": {"billed_units": {"search_units": 1}}})


def test_a_scorer_built_per_request_still_waits_for_the_ones_before_it():
    """An app that builds its reranker per request (get_scorer, from_spec, the adapters): each
    scorer is garbage-collected before the next request, and the key's limit still holds."""
    clock = SteppedClock()
    stamps = []

    def api(request: httpx.Request) -> httpx.Response:
        stamps.append(clock.monotonic())
        return billed_answer(request)

    limit = RateLimit(requests_per_minute=1, clock=clock)
    with httpx.Client(transport=httpx.MockTransport(api)) as pool:
        client = cohere.ClientV2(api_key=KEY, httpx_client=pool)
        for _ in range(3):
            CohereScorer(client=client, rate_limit=limit, deadline=LONG).score(QUERY, DOCS)
            gc.collect()
        assert stamps == [clock.start, clock.start + 60, clock.start + 120]
        # still active: another limit for the key is refused, naming both
        with pytest.raises(ConfigError, match=r"requests_per_minute=1.*requests_per_minute=2"):
            CohereScorer(client=client, rate_limit=RateLimit(requests_per_minute=2, clock=clock))


@pytest.mark.parametrize("kind", ["cohere", "v1"])
def test_pickled_scorers_loaded_in_the_process_share_its_limiter(kind, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY" if kind == "cohere" else "RERANK_API_KEY", "sk-pickled-0000")
    url = f"http://127.0.0.1:9/pickled-{kind}"
    one = RateLimit(requests_per_minute=1)
    data = pickle.dumps(
        make(kind, url, key=None, rate_limit=one, deadline=5.0, retry=RetryPolicy(attempts=1))
    )
    first = pickle.loads(data)
    first._limiter.acquire_sync(remaining=1.0)  # its request of this minute
    del first
    gc.collect()  # the original and the first copy are gone: the minute is not forgotten
    with pytest.raises(
        DeadlineExceeded, match="not sent"
    ):  # refused by the limiter, not a refused connection
        pickle.loads(data).score(QUERY, DOCS)


def test_bad_limits_and_budgets_are_config_errors():
    url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="rate_limit must be"):
        make("cohere", url, rate_limit=10)
    with pytest.raises(ConfigError, match="units_per_minute"):
        make("v1", url, rate_limit=RateLimit(units_per_minute=100))
    with pytest.raises(ConfigError, match=r"batch_size=1000.*10 search units"):
        make("cohere", url, rate_limit=RateLimit(units_per_minute=5))
    make("cohere", url + "/b", rate_limit=RateLimit(units_per_minute=5), batch_size=500)
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="max_search_units"):
            make("cohere", url, max_search_units=bad)
        with pytest.raises(ConfigError, match="max_tokens"):
            LLMListwiseRanker(lambda m: "[1]", max_tokens=bad)


# -- budgets and usage -----------------------------------------------------------------------------------


def test_a_search_unit_budget_refuses_before_sending():
    clock = SteppedClock()
    with StampedServer(clock) as server:
        scorer = make("cohere", server.url, max_search_units=3)
        scorer.score(QUERY, docs(150))  # estimated and billed 2
        assert scorer.usage == Usage(requests=1, search_units=2)
        with pytest.raises(
            BudgetExceeded, match=r"max_search_units=3 would be passed: 2 search units spent.*about 2"
        ):
            scorer.score(QUERY, docs(150))
        assert len(server.arrivals) == 1
        # several requests of one call are estimated together: none is sent when they would pass it
        split = make("cohere", server.url, max_search_units=2, batch_size=100)
        with pytest.raises(BudgetExceeded, match=r"250 documents in 3 request"):
            split.score(QUERY, docs(250))
        assert len(server.arrivals) == 1
        # keep_order never hides a spent budget
        fallback = make("cohere", server.url, max_search_units=1, on_error="keep_order")
        with pytest.raises(BudgetExceeded):
            rerank(QUERY, docs(150), fallback)
        assert scorer.reset_usage() == Usage(requests=1, search_units=2)
        scorer.score(QUERY, docs(150))
        assert len(server.arrivals) == 2


def test_billed_units_replace_the_estimate():
    clock = SteppedClock()
    with StampedServer(clock, extra_units=2) as server:  # bills 3 for a request estimated at 1
        limit = RateLimit(units_per_minute=3, clock=clock)
        scorer = make("cohere", server.url, max_search_units=5, rate_limit=limit, batch_size=100)
        scorer.score(QUERY, DOCS)
        assert scorer.usage.search_units == 3
        scorer.score(QUERY, DOCS)  # 3 billed + 1 estimated fits the window only after the first leaves it
        assert server.stamps == [clock.start, clock.start + 60]
        with pytest.raises(BudgetExceeded, match="6 search units spent"):
            scorer.score(QUERY, DOCS)


def test_a_request_abandoned_at_the_deadline_spends_its_estimate():
    """The API serves (and bills) a request its caller stopped waiting for: the budget counts it."""
    release = threading.Event()

    def slow_api(request: httpx.Request) -> httpx.Response:
        release.wait(10)
        return billed_answer(request)

    with httpx.Client(transport=httpx.MockTransport(slow_api)) as pool:
        client = cohere.ClientV2(api_key=KEY, httpx_client=pool)
        scorer = CohereScorer(client=client, max_search_units=2, deadline=0.05, retry=RetryPolicy(attempts=1))
        try:
            for _ in range(2):
                with pytest.raises(DeadlineExceeded):
                    scorer.score(QUERY, DOCS)
            with pytest.raises(BudgetExceeded, match="2 search units spent"):
                scorer.score(QUERY, DOCS)
            assert scorer.usage == Usage(requests=2)  # sent; no answer said what was billed
        finally:
            release.set()


async def test_requests_cancelled_with_their_call_spend_their_estimates():
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(never)) as pool:
        client = cohere.AsyncClientV2(api_key=KEY, httpx_client=pool)
        scorer = CohereScorer(async_client=client, max_search_units=3, batch_size=100, deadline=0.05)
        with pytest.raises(DeadlineExceeded):
            await scorer.ascore(QUERY, docs(150))  # two requests in flight, both sent, both cut
        assert scorer.usage == Usage(requests=2)
        with pytest.raises(BudgetExceeded, match="2 search units spent"):
            await scorer.ascore(QUERY, docs(150))


def test_error_answers_spend_nothing_an_unreadable_answer_its_estimate():
    answers = [
        httpx.Response(503, json={"message": "busy"}),  # retried
        httpx.Response(400, json={"message": "bad request"}),
        httpx.Response(200, content=b'{"results": [{"index": 0, "relevance_sc'),  # served, unreadable
    ]
    with httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0))) as pool:
        client = cohere.ClientV2(api_key=KEY, httpx_client=pool)
        scorer = CohereScorer(client=client, max_search_units=5, retry=FAST)
        with pytest.raises(BackendError, match="HTTP 400"):
            scorer.score(QUERY, DOCS)
        assert scorer._budget is not None
        assert (scorer.usage.requests, scorer._budget.spent) == (2, 0)
        with pytest.raises(BackendError, match="HTTP 200"):
            scorer.score(QUERY, DOCS)
        assert (scorer.usage.requests, scorer._budget.spent) == (3, 1)


@pytest.mark.parametrize("kind", ["cohere", "v1", "tei"])
async def test_usage_equals_what_the_server_billed_and_explain_reports_it(kind):
    clock = SteppedClock()
    with StampedServer(clock, extra_units=1) as server:
        scorer = make(kind, server.url, batch_size=100)
        ex = explain(QUERY, docs(150), scorer)  # two requests: 100 and 50 documents
        billed = sum(u for _, _, u in server.arrivals)
        expected = {
            "cohere": Usage(requests=2, search_units=billed),
            "v1": Usage(requests=2, input_tokens=7 * 150, total_tokens=7 * 150),
            "tei": Usage(requests=2),
        }[kind]
        assert ex.usage == {scorer.name: expected}
        assert scorer.usage == expected
        # the async path, and the sync path called inside a running loop (its worker thread)
        assert (await aexplain(QUERY, docs(150), scorer)).usage == {scorer.name: expected}
        assert explain(QUERY, docs(150), scorer).usage == {scorer.name: expected}
        assert scorer.usage.requests == 6
        assert explain(QUERY, [], scorer).usage == {}


async def test_retries_are_counted_as_requests():
    clock = SteppedClock()
    with StampedServer(clock) as server:
        server.faults.extend([("status", 503), ("status", 429, {"Retry-After": "0"})])
        scorer = make("cohere", server.url, rate_limit=RateLimit(requests_per_minute=10, clock=clock))
        ex = await aexplain(QUERY, DOCS, scorer)
        assert ex.usage[scorer.name] == Usage(requests=3, search_units=1)


# -- LLM rerankers ------------------------------------------------------------------------------------------


def rule_llm(messages: list[dict[str, str]]) -> str:
    return rule_answer("\n".join(m["content"] for m in messages))[0]


def test_a_plain_function_reports_requests_only_unless_it_returns_usage():
    plain = LLMListwiseRanker(rule_llm)
    assert explain(QUERY, DOCS, plain).usage == {plain.name: Usage(requests=1)}

    def reporting(messages: list[dict[str, str]]) -> Reply:
        return Reply(rule_llm(messages), usage=Usage(input_tokens=40, output_tokens=5, total_tokens=45))

    scorer = LLMPointwiseScorer(reporting, max_concurrency=3)  # calls on worker threads
    ex = explain(QUERY, DOCS, scorer)
    assert ex.usage == {scorer.name: Usage(requests=4, input_tokens=160, output_tokens=20, total_tokens=180)}
    assert scorer.reset_usage() == ex.usage[scorer.name] and scorer.usage == Usage()


def test_a_token_budget_refuses_a_call_before_sending():
    calls = []

    def llm(messages: list[dict[str, str]]) -> Reply:
        calls.append(messages)
        chars = sum(len(m["content"]) for m in messages)
        return Reply(rule_llm(messages), usage=Usage(total_tokens=chars))  # one token per character

    ranker = LLMListwiseRanker(llm, max_tokens=10)
    with pytest.raises(
        BudgetExceeded, match=r"max_tokens=10 would be passed.*characters at 0.25 tokens per character"
    ):
        rerank(QUERY, DOCS, ranker)
    assert calls == []
    rerank(QUERY, DOCS, LLMListwiseRanker(llm))
    chars = sum(len(m["content"]) for m in calls.pop())
    roomy = LLMListwiseRanker(llm, max_tokens=chars + chars // 2)
    rerank(QUERY, DOCS, roomy)  # a quarter of its characters estimated; it reported all of them
    assert roomy.usage.total_tokens == chars and len(calls) == 1
    # the next estimate uses the observed tokens per character (1.0): it would pass the budget
    with pytest.raises(BudgetExceeded, match=rf"{chars} tokens spent.*observed tokens per character"):
        rerank(QUERY, DOCS, roomy)
    assert len(calls) == 1


async def test_an_llm_call_that_fails_or_is_cancelled_once_started_spends_its_estimate():
    seen = []

    def failing(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        raise ConnectionError("connection reset after the request was sent")

    ranker = LLMPointwiseScorer(failing, max_tokens=10_000)
    with pytest.raises(BackendError, match="connection reset"):
        ranker.score(QUERY, DOCS[:1])
    estimate = ranker.estimate_tokens(seen[0])
    assert ranker.usage == Usage(requests=1)
    assert ranker._budget is not None and ranker._budget.spent == estimate

    started = asyncio.Event()

    async def hanging(messages: list[dict[str, str]]) -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    scorer = LLMPointwiseScorer(hanging, max_tokens=estimate + estimate // 2)
    call = asyncio.create_task(scorer.ascore_details(QUERY, DOCS[:1]))
    await started.wait()
    call.cancel()  # a deadline around it, or a sibling's failure
    with pytest.raises(asyncio.CancelledError):
        await call
    assert scorer.usage == Usage(requests=1)
    with pytest.raises(BudgetExceeded, match=rf"{estimate} tokens spent"):
        await scorer.ascore_details(QUERY, DOCS[:1])


async def test_a_budget_with_concurrent_calls_holds_their_estimates():
    seen = []

    async def llm(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        await asyncio.sleep(0)  # every call has started (and holds its estimate) before one ends
        return "Yes"

    probe = LLMPointwiseScorer(llm)
    await probe.ascore_details(QUERY, DOCS)
    estimates = sorted(probe.estimate_tokens(m) for m in seen)
    assert sum(estimates[-2:]) < sum(estimates[:3])  # any two calls fit the budget below, no three
    seen.clear()
    scorer = LLMPointwiseScorer(llm, max_concurrency=4, max_tokens=sum(estimates[-2:]))
    with pytest.raises(BudgetExceeded, match="held by calls in flight"):
        await scorer.ascore_details(QUERY, DOCS)
    assert len(seen) == 2


def test_langchain_usage_metadata_is_counted(chat_server_url):
    dev("langchain_openai")
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="local", base_url=chat_server_url + "/v1", api_key="sk-local", timeout=10)
    ranker = LLMListwiseRanker(model)
    ex = explain(QUERY, DOCS, ranker)
    # the chat server reports prompt 1, completion 1, total 2 per call
    assert ex.usage == {ranker.name: Usage(requests=1, input_tokens=1, output_tokens=1, total_tokens=2)}


def test_llama_index_raw_usage_is_counted():
    dev("llama_index.core")
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata

    class Local(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="local")

        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
            return CompletionResponse(text=rule_answer(prompt)[0], raw={"usage": usage})

        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
            raise NotImplementedError

    ranker = LLMListwiseRanker(Local())
    assert explain(QUERY, DOCS, ranker).usage == {
        ranker.name: Usage(requests=1, input_tokens=11, output_tokens=2, total_tokens=13)
    }


@pytest.fixture
def chat_server_url():
    with ChatServer() as server:
        yield server.url
