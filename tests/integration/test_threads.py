"""One scorer shared by a thread pool and by several event loops at once.

Each kind of scorer (a rerank server's client, Cohere built from ``base_url=`` and with injected
SDK clients, the cross-encoder, ColBERT with its document cache, a SQLite-backed CachedScorer) is
called at the same time from 8 threads making sync calls and from threads that each run
``asyncio.run`` of a few concurrent async calls. Every call has candidates (texts and ids) of its
own and must get back exactly those, each once, scored as a call made alone would score them, in
score order with ties in input order. A failure may only be a ``BackendError`` that
``on_error="keep_order"`` turns into the fallback order; against a healthy server there is none.

``RERANKERS_STRESS_CALLS`` (default 4) sets the rounds per thread: a local soak runs e.g.
``RERANKERS_STRESS_CALLS=100 RERANKERS_STRESS_REPORT=soak.tsv pytest tests/integration/test_threads.py``;
the report gets one line per hammered scorer: tag, calls, fallbacks, errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cohere
import httpx
import pytest
from local_servers import RerankServer, overlap
from tiny import build_colbert

from rerankers_plugins import (
    BiEncoderScorer,
    CachedScorer,
    Candidate,
    CohereScorer,
    ColBERTScorer,
    CrossEncoderScorer,
    RemoteScorer,
    Scored,
    arerank,
    rerank,
)
from rerankers_plugins.scorers._aio import LoopLocal
from rerankers_plugins.scorers.retry import RetryPolicy

logger = logging.getLogger(__name__)

QUERY = "red apple orchard"
ROUNDS = int(os.environ.get("RERANKERS_STRESS_CALLS", "4"))
REPORT = os.environ.get("RERANKERS_STRESS_REPORT")  # a file to append "tag calls fallbacks errors" to
SYNC_THREADS = 8
LOOP_THREADS = 3
PER_LOOP = 3  # concurrent arerank calls in each asyncio.run
FAST = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05)
KEY = "sk-threads-test"
SHARED = "shared red apple orchard by the river"  # in every call: concurrent cache hits and misses


def candidates(tag: str, *, shared: bool = False) -> list[Candidate]:
    """Texts and ids no other call has (the optional shared text gets an id of this call)."""
    texts = [
        f"{tag} red apple",
        f"{tag} pear",
        f"{tag} red apple orchard",
        f"{tag} apple",
        f"{tag} green {tag} pear",
        f"{tag} orchard",
    ]
    if shared:
        texts.append(SHARED)
    return [Candidate(t, id=f"{tag}#{j}") for j, t in enumerate(texts)]


@dataclass
class Tally:
    calls: int = 0
    fallbacks: int = 0
    errors: list[BaseException] = field(default_factory=list)
    outputs: list[tuple[list[Candidate], list[Scored]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cands: list[Candidate], out: list[Scored], took: float) -> None:
        with self.lock:
            self.calls += 1
            self.outputs.append((cands, out))
            self.seconds.append(took)
            self.fallbacks += bool(out and out[0].details.get("fallback"))

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.calls += 1
            self.errors.append(exc)


def hammer(
    scorer: Any,
    tag: str,
    *,
    rounds: int = ROUNDS,
    sync_threads: int = SYNC_THREADS,
    loop_threads: int = LOOP_THREADS,
    per_loop: int = PER_LOOP,
    shared: bool = False,
) -> Tally:
    """Sync calls from ``sync_threads`` threads and async calls from ``loop_threads`` event loops
    (``per_loop`` at once in each), all on ``scorer``, all started together."""
    tally = Tally()
    start = threading.Barrier(sync_threads + loop_threads)

    def sync_worker(t: int) -> None:
        start.wait()
        for r in range(rounds):
            cands = candidates(f"{tag}s{t}r{r}", shared=shared)
            t0 = time.perf_counter()
            try:
                out = rerank(QUERY, cands, scorer)
            except BaseException as exc:
                tally.fail(exc)
            else:
                tally.add(cands, out, time.perf_counter() - t0)

    async def one(cands: list[Candidate]) -> None:
        t0 = time.perf_counter()
        try:
            out = await arerank(QUERY, cands, scorer)
        except BaseException as exc:
            tally.fail(exc)
        else:
            tally.add(cands, out, time.perf_counter() - t0)

    async def many(t: int, r: int) -> None:
        await asyncio.gather(*(one(candidates(f"{tag}a{t}r{r}c{c}", shared=shared)) for c in range(per_loop)))

    def loop_worker(t: int) -> None:
        start.wait()
        for r in range(rounds):
            asyncio.run(many(t, r))

    workers = [threading.Thread(target=sync_worker, args=(t,)) for t in range(sync_threads)]
    workers += [threading.Thread(target=loop_worker, args=(t,)) for t in range(loop_threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers), "a call never returned"
    assert tally.calls == rounds * (sync_threads + loop_threads * per_loop)
    logger.info("%s: %d calls, %d fallbacks, %d errors", tag, tally.calls, tally.fallbacks, len(tally.errors))
    if REPORT:  # a soak's running total: one line per hammered scorer
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(f"{tag}\t{tally.calls}\t{tally.fallbacks}\t{len(tally.errors)}\n")
    return tally


def check(tally: Tally, expect: Callable[[list[str]], list[float]], *, healthy: bool = True) -> None:
    """Every call got its own candidates, each once, scored as alone, sorted, ties stable."""
    assert not tally.errors, f"{len(tally.errors)} calls raised: {tally.errors[:3]!r}"
    texts = list(dict.fromkeys(c.text for cands, _ in tally.outputs for c in cands))
    wanted = dict(zip(texts, expect(texts), strict=True)) if texts else {}
    if healthy:
        assert tally.fallbacks == 0, [
            out[0].details["error"] for _, out in tally.outputs if out[0].details.get("fallback")
        ][:3]
    for cands, out in tally.outputs:
        assert len(out) == len(cands)
        assert [(s.id, s.text) for s in sorted(out, key=lambda s: s.id)] == sorted(
            (c.id, c.text) for c in cands
        )  # its own, complete, no duplicates
        position = {c.id: i for i, c in enumerate(cands)}
        if out[0].details.get("fallback"):
            assert [s.id for s in out] == [c.id for c in cands]  # keep_order: the input order
            assert all(s.details["fallback"] == "keep_order" for s in out)
            continue
        keys = [(-s.score, position[s.id]) for s in out]
        assert keys == sorted(keys)  # by score, ties in input order
        for s in out:  # scored as a call of its own would score it: no cross-talk
            assert s.score == pytest.approx(wanted[s.text], abs=1e-4), (s.id, s.text)


def overlaps(texts: list[str]) -> list[float]:
    return [overlap(QUERY, t) for t in texts]


def alone(scorer: Any) -> Callable[[list[str]], list[float]]:
    """What the scorer gives these texts with no other call running (after the stress)."""
    return lambda texts: list(scorer.score(QUERY, texts))


@pytest.fixture(scope="module")
def server():
    with RerankServer() as s:
        yield s


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory):
    return build_colbert(tmp_path_factory.mktemp("colbert-threads"))


# -- API backends --------------------------------------------------------------------------------


def test_remote_scorer_shared_by_threads_and_loops(server):
    scorer = RemoteScorer(server.url, protocol="tei", batch_size=2, retry=FAST, on_error="keep_order")
    check(hammer(scorer, "tei"), overlaps)
    assert len(scorer._async_clients) <= SYNC_THREADS + LOOP_THREADS  # finished loops are pruned


def test_cohere_from_base_url_shared_by_threads_and_loops(server):
    scorer = CohereScorer(api_key=KEY, base_url=server.url, batch_size=3, retry=FAST, on_error="keep_order")
    check(hammer(scorer, "coh"), overlaps)


def test_cohere_with_injected_clients_shared_by_threads_and_loops(server):
    """The injected async client serves the loop it first ran on (an application's own loop,
    here a thread running one for the whole test); every other loop and every sync call uses the
    injected sync client, in worker threads."""
    sync_pool = httpx.Client(timeout=30)
    async_pool = httpx.AsyncClient(timeout=30)
    sync_client = cohere.ClientV2(api_key=KEY, base_url=server.url, httpx_client=sync_pool)
    async_client = cohere.AsyncClientV2(api_key=KEY, base_url=server.url, httpx_client=async_pool)
    both = CohereScorer(
        client=sync_client,
        async_client=async_client,
        batch_size=3,
        retry=FAST,
        on_error="keep_order",
    )
    app_loop = asyncio.new_event_loop()
    runner = threading.Thread(target=app_loop.run_forever)
    runner.start()
    try:
        first = candidates("app")
        asyncio.run_coroutine_threadsafe(arerank(QUERY, first, both), app_loop).result(60)  # binds

        async def on_app_loop() -> list[tuple[list[Candidate], list[Scored]]]:
            calls = [candidates(f"app{i}") for i in range(SYNC_THREADS)]
            outs = await asyncio.gather(*(arerank(QUERY, c, both) for c in calls))
            return list(zip(calls, outs, strict=True))

        app_calls = asyncio.run_coroutine_threadsafe(on_app_loop(), app_loop)
        tally = hammer(both, "inj")
        for cands, out in app_calls.result(120):
            tally.add(cands, out, 0.0)
        check(tally, overlaps)
        only_sync = CohereScorer(client=sync_client, batch_size=3, retry=FAST, on_error="keep_order")
        check(hammer(only_sync, "injs"), overlaps)
    finally:
        asyncio.run_coroutine_threadsafe(async_pool.aclose(), app_loop).result(60)
        app_loop.call_soon_threadsafe(app_loop.stop)
        runner.join(60)
        app_loop.close()
        sync_pool.close()


def test_cohere_injected_async_client_on_a_foreign_loop_falls_back(server):
    """An async client cannot cross event loops: a second loop gets a BackendError (so
    keep_order falls back), never the SDK's own 'Event loop is closed' from a dead loop's pool."""
    pool = httpx.AsyncClient(timeout=30)
    scorer = CohereScorer(
        async_client=cohere.AsyncClientV2(api_key=KEY, base_url=server.url, httpx_client=pool),
        retry=FAST,
        on_error="keep_order",
    )
    cands = candidates("own")

    async def on_its_loop() -> list[Scored]:
        try:
            return await arerank(QUERY, cands, scorer)
        finally:
            await pool.aclose()

    first = asyncio.run(on_its_loop())
    assert not first[0].details.get("fallback")
    for again in (asyncio.run(arerank(QUERY, cands, scorer)), rerank(QUERY, cands, scorer)):
        assert [s.id for s in again] == [c.id for c in cands]
        assert again[0].details["fallback"] == "keep_order"
        assert "another event loop" in again[0].details["error"]


@pytest.mark.parametrize("kind", ["tei", "cohere"])
def test_failures_under_load_are_backend_errors_that_fall_back(kind):
    """Scripted faults (503s, malformed answers, hangs past the timeout) spread over concurrent
    calls: each call returns every candidate, reranked or in the fallback order; nothing else."""
    with RerankServer() as faulty:
        faulty.faults.extend([("status", 503), ("malformed",), ("hang", 0.6), ("status", 500)] * 12)
        kw: dict[str, Any] = {
            "timeout": 0.3,
            "retry": RetryPolicy(attempts=2, initial=0.01),
            "on_error": "keep_order",
        }
        if kind == "cohere":
            scorer: Any = CohereScorer(api_key=KEY, base_url=faulty.url, batch_size=3, **kw)
        else:
            scorer = RemoteScorer(faulty.url, batch_size=2, **kw)
        tally = hammer(scorer, f"f{kind}", rounds=2)
    check(tally, overlaps, healthy=False)
    assert tally.fallbacks > 0


def test_loop_local_table_is_shared_safely():
    """Many threads adding, reading and pruning one per-loop table at once (each asyncio.run a
    loop of its own): every loop gets one resource of its own, made once, closed with its loop."""
    made: list[int] = []
    closed: list[int] = []
    lock = threading.Lock()

    def make() -> tuple[tuple[int, asyncio.AbstractEventLoop], Any]:
        with lock:
            made.append(len(made))
            n = made[-1]
        # the resource holds its loop, as a real client's transports do: a closed loop stays in
        # the table until a later get() prunes it, from whichever thread comes next
        loop = asyncio.get_running_loop()

        async def aclose() -> None:
            assert loop.is_running()
            with lock:
                closed.append(n)

        return (n, loop), aclose

    table: LoopLocal[tuple[int, asyncio.AbstractEventLoop]] = LoopLocal(make)
    errors: list[BaseException] = []

    async def use() -> None:
        first = await table.get()
        await asyncio.sleep(0)
        assert await table.get() == first

    def worker() -> None:
        try:
            for _ in range(25 * ROUNDS):
                asyncio.run(use())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show in few runs
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert sorted(closed) == sorted(made) == list(range(8 * 25 * ROUNDS))
    asyncio.run(use())
    assert len(table) <= 8 + 1  # finished loops were pruned


# -- local models ----------------------------------------------------------------------------------


def test_cross_encoder_shared_by_threads_and_loops(tiny_ce_dir):
    scorer = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", batch_size=2)
    tally = hammer(scorer, "ce", shared=True)
    check(tally, alone(scorer))


def test_colbert_and_its_document_cache_shared_by_threads_and_loops(colbert_dir, tmp_path):
    scorer = ColBERTScorer(str(colbert_dir), dtype="float32", batch_size=2, cache_dir=tmp_path / "vectors")
    tally = hammer(scorer, "cb", shared=True)
    check(tally, alone(scorer))
    texts = {c.text for cands, _ in tally.outputs for c in cands}
    assert len(scorer.cache) == len(texts)  # each document encoded and stored once
    fresh = ColBERTScorer(str(colbert_dir), dtype="float32", cache_dir=tmp_path / "vectors")
    assert fresh.index(sorted(texts)) == 0  # and every one reached the disk, complete


def test_cached_scorer_on_sqlite_shared_by_threads_and_loops(tiny_ce_dir, tmp_path):
    inner = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", batch_size=2)
    cached = CachedScorer(inner, path=tmp_path / "scores.sqlite")
    tally = hammer(cached, "cache", shared=True)
    check(tally, alone(inner))
    assert cached._db is not None  # the store never degraded to memory only
    pairs = sum(len(cands) for cands, _ in tally.outputs)
    assert cached.hits + cached.misses == pairs
    again = CachedScorer(inner, path=tmp_path / "scores.sqlite", max_entries=1)
    texts = [c.text for cands, _ in tally.outputs for c in cands]
    again.score(QUERY, texts[:50])
    assert again.misses == 0  # every score computed under load reached the file


@pytest.mark.parametrize("kind", ["colbert", "bi-encoder"])
def test_tokenizer_settings_of_concurrent_calls_never_mix(kind, colbert_dir, tiny_bi_dir):
    """A fast tokenizer holds its truncation settings in one shared object, and these scorers
    tokenize with several (query and document lengths; the length check and the encoder's own
    call): concurrent calls on inputs longer than the limits must each be cut at their own."""
    if kind == "colbert":
        scorer: Any = ColBERTScorer(str(colbert_dir), dtype="float32", cache_bytes=0)
    else:
        scorer = BiEncoderScorer(str(tiny_bi_dir), dtype="float32")
    words = "red apple orchard pear green river stone"
    calls = [
        (" ".join([words] * (8 + i)), [" ".join([f"{words} {i} {j}"] * (40 + 7 * j)) for j in range(6)])
        for i in range(8)
    ]
    want = [scorer.score(q, docs) for q, docs in calls]
    got: list[list[list[float]]] = [[] for _ in calls]
    start = threading.Barrier(len(calls))

    def worker(i: int) -> None:
        start.wait()
        for _ in range(3 * ROUNDS):
            got[i].append(scorer.score(*calls[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, results in enumerate(got):
        assert len(results) == 3 * ROUNDS
        for scores in results:
            assert scores == pytest.approx(want[i], abs=1e-4)
