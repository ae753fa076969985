"""Faults against the API backends with a total deadline: how long each faulty call took, what
came back, and how many documents were lost (must be 0).

    python benchmarks/faults.py [--deadline 2.0] [--timeout 1.0] [--rounds 20] [--only faults|clients|threads]

Every backend (TEI, /v1/rerank, Cohere) runs every fault against the loopback servers of the
test suite (real protocols, scripted faults), sync and async, with ``on_error="keep_order"``.
Two more tables:

* injected clients: a server that trickles its answer, ``deadline=1.0``: the time to the fallback
  with an injected ``cohere.ClientV2`` / ``AsyncClientV2`` against one built from ``base_url=``;
* threads: one scorer shared by 8 threads of sync calls and 3 threads each running ``asyncio.run``
  of 3 concurrent async calls (a web app's thread pool beside async endpoints): calls, failures
  (fallbacks and exceptions), documents lost, p50 / p95 latency per call.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import cohere
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from local_servers import RerankServer

from rerankers_plugins import Candidate, CohereScorer, RemoteScorer, arerank, rerank
from rerankers_plugins.scorers.retry import RetryPolicy

DOCS = [f"document {i} about red apples" if i % 3 == 0 else f"document {i} about pears" for i in range(40)]
FAULTS = {
    "trickle 1 byte / 0.25 s": [("trickle", 0.25)] * 20,
    "hang 30 s": [("hang", 30.0)] * 20,
    "429 Retry-After: 120": [("status", 429, {"Retry-After": "120"})] * 20,
    "503 on every try": [("status", 503)] * 40,
    "Retry-After: nan, then OK": [("status", 503, {"Retry-After": "nan"})],
    "score Infinity": [("score", float("inf"))] * 20,
    "score 7.5 (off scale)": [("score", 7.5)] * 20,
    "200 with no results": [("empty",)] * 20,
    "malformed JSON": [("malformed",)] * 20,
}


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def make(kind: str, url: str, deadline: float, timeout: float):
    kw = {
        "deadline": deadline,
        "timeout": timeout,
        "on_error": "keep_order",
        "retry": RetryPolicy(attempts=4),
    }
    if kind == "cohere":
        return CohereScorer(api_key="k", base_url=url, batch_size=10, **kw)
    return RemoteScorer(url, protocol=kind, api_key="k", batch_size=10, **kw)


def _fallback_time(client: str, path: str, deadline: float) -> tuple[float, list]:
    """One call against a trickling server; seconds to the answer, and the answer."""
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]
    with RerankServer() as server, httpx.Client() as sync_pool:
        server.faults.extend([("trickle", 0.25, 10.0)] * 20)
        async_pool = httpx.AsyncClient()
        kw = {"deadline": deadline, "timeout": 1.0, "on_error": "keep_order", "batch_size": 10}
        if client == "injected ClientV2":
            kw["client"] = cohere.ClientV2(api_key="bench-key", base_url=server.url, httpx_client=sync_pool)
        elif client == "injected AsyncClientV2":
            kw["async_client"] = cohere.AsyncClientV2(
                api_key="bench-key", base_url=server.url, httpx_client=async_pool
            )
        else:
            kw.update(api_key="bench-key", base_url=server.url)
        scorer = CohereScorer(**kw)

        async def call():
            try:
                return await arerank("red apples", cands, scorer)
            finally:
                await async_pool.aclose()

        t0 = time.monotonic()
        out = rerank("red apples", cands, scorer) if path == "sync" else asyncio.run(call())
        took = time.monotonic() - t0
        if path == "sync":
            asyncio.run(async_pool.aclose())
        for thread in threading.enumerate():  # the abandoned SDK calls end with the trickle
            if thread.name.startswith("rerankers-plugins-sdk"):
                thread.join(timeout=30)
    return took, out


def injected_clients(deadline: float) -> None:
    """Time to the fallback against a trickling server, per kind of Cohere client."""
    print(
        f"\nCohere against a server trickling its answer (1 byte / 0.25 s), deadline {deadline} s, "
        "timeout 1 s, keep_order"
    )
    print("| client | path | seconds to fallback | outcome | lost |\n|---|---|---:|---|---:|")
    for client, path in [
        ("injected ClientV2", "sync"),
        ("injected ClientV2", "async"),
        ("injected AsyncClientV2", "async"),
        ("base_url", "sync"),
        ("base_url", "async"),
    ]:
        took, out = _fallback_time(client, path, deadline)
        lost = len({str(i) for i in range(len(DOCS))} - {s.id for s in out})
        outcome = (
            "fallback (" + out[0].details["error"].split(":")[0] + ")"
            if out[0].details.get("fallback")
            else "reranked"
        )
        print(f"| {client} | {path} | {took:.2f} | {outcome} | {lost} |")


def _hammer(scorer, rounds: int) -> tuple[list[float], int, int]:
    """8 threads of sync calls and 3 threads of ``asyncio.run`` (3 async calls at once) on one
    scorer; each call's candidates are its own. Returns per-call seconds, failures, lost."""
    lock = threading.Lock()
    seconds: list[float] = []
    tally = {"failures": 0, "lost": 0}
    start = threading.Barrier(11)

    def record(cands, out, took):
        with lock:
            seconds.append(took)
            tally["failures"] += bool(out is None or out[0].details.get("fallback"))
            tally["lost"] += len(cands) if out is None else len({c.id for c in cands} - {s.id for s in out})

    def cands_for(tag):
        return [Candidate(f"{tag} {d}", id=f"{tag}#{i}") for i, d in enumerate(DOCS)]

    def sync_worker(t):
        start.wait()
        for r in range(rounds):
            cands = cands_for(f"s{t}r{r}")
            t0 = time.perf_counter()
            try:
                out = rerank("red apples", cands, scorer)
            except Exception:
                out = None
            record(cands, out, time.perf_counter() - t0)

    async def one(cands):
        t0 = time.perf_counter()
        try:
            out = await arerank("red apples", cands, scorer)
        except Exception:
            out = None
        record(cands, out, time.perf_counter() - t0)

    async def many(t, r):
        await asyncio.gather(*(one(cands_for(f"a{t}r{r}c{c}")) for c in range(3)))

    def loop_worker(t):
        start.wait()
        for r in range(rounds):
            asyncio.run(many(t, r))

    workers = [threading.Thread(target=sync_worker, args=(t,)) for t in range(8)]
    workers += [threading.Thread(target=loop_worker, args=(t,)) for t in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return seconds, tally["failures"], tally["lost"]


def shared_by_threads(rounds: int) -> None:
    """One scorer, 8 threads of sync calls and 3 event loops of 3 concurrent async calls."""
    print(
        f"\nOne shared scorer: 8 threads x {rounds} sync calls + 3 loops x {rounds} x 3 async calls, "
        f"{len(DOCS)} documents each, keep_order"
    )
    print("| scorer | calls | failures | lost | p50 ms | p95 ms |\n|---|---:|---:|---:|---:|---:|")
    with RerankServer() as server, httpx.Client() as sync_pool:
        scorers = {
            "RemoteScorer (tei)": RemoteScorer(
                server.url, protocol="tei", batch_size=10, on_error="keep_order"
            ),
            "CohereScorer (base_url)": CohereScorer(
                api_key="bench-key", base_url=server.url, batch_size=10, on_error="keep_order"
            ),
            "CohereScorer (injected ClientV2)": CohereScorer(
                client=cohere.ClientV2(api_key="bench-key", base_url=server.url, httpx_client=sync_pool),
                batch_size=10,
                on_error="keep_order",
            ),
        }
        for label, scorer in scorers.items():
            seconds, failures, lost = _hammer(scorer, rounds)
            p95 = statistics.quantiles(seconds, n=20)[18]
            print(
                f"| {label} | {len(seconds)} | {failures} | {lost} | "
                f"{1000 * statistics.median(seconds):.0f} | {1000 * p95:.0f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deadline", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=20, help="calls per thread in the threads table")
    ap.add_argument("--only", choices=["faults", "clients", "threads"], default=None)
    args = ap.parse_args()
    if args.only in (None, "faults"):
        faults(args.deadline, args.timeout)
    if args.only in (None, "clients"):
        injected_clients(1.0)
    if args.only in (None, "threads"):
        shared_by_threads(args.rounds)


def faults(deadline: float, timeout: float) -> None:
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]
    print(f"{len(DOCS)} documents, batches of 10, timeout {timeout} s, deadline {deadline} s, keep_order")
    print("| fault | backend | path | seconds | outcome | lost |\n|---|---|---|---:|---|---:|")
    worst = 0.0
    for fault, script in [*FAULTS.items(), ("connection refused", None)]:
        for kind in ("tei", "v1", "cohere"):
            for path in ("sync", "async"):
                with RerankServer() as server:
                    if script is not None:
                        server.faults.extend(script)
                    url = closed_port() if script is None else server.url
                    scorer = make(kind, url, deadline, timeout)
                    t0 = time.monotonic()
                    if path == "sync":
                        out = rerank("red apples", cands, scorer)
                    else:
                        out = asyncio.run(arerank("red apples", cands, scorer))
                    took = time.monotonic() - t0
                worst = max(worst, took)
                lost = len({c.id for c in cands} - {s.id for s in out})
                outcome = (
                    "fallback (" + out[0].details["error"].split(":")[0] + ")"
                    if out[0].details.get("fallback")
                    else "reranked"
                )
                print(f"| {fault} | {kind} | {path} | {took:.2f} | {outcome} | {lost} |")
    print(f"\nslowest faulty call: {worst:.2f} s against a deadline of {deadline} s")


if __name__ == "__main__":
    main()
