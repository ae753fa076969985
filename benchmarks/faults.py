"""Faults against the API backends with a total deadline: how long each faulty call took, what
came back, and how many documents were lost (must be 0).

    python benchmarks/faults.py [--deadline 2.0] [--timeout 1.0]

Every backend (TEI, /v1/rerank, Cohere) runs every fault against the loopback servers of the
test suite (real protocols, scripted faults), sync and async, with ``on_error="keep_order"``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from local_servers import RerankServer

from rerankers_plugins import Candidate, CohereScorer, RemoteScorer, arerank, rerank
from rerankers_plugins.scorers._http import RetryPolicy

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
        return CohereScorer(api_key="k", base_url=url, max_documents_per_request=10, **kw)
    return RemoteScorer(url, protocol=kind, api_key="k", batch_size=10, **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deadline", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args()
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(DOCS)]
    print(
        f"{len(DOCS)} documents, batches of 10, timeout {args.timeout} s, deadline {args.deadline} s, keep_order"
    )
    print("| fault | backend | path | seconds | outcome | lost |\n|---|---|---|---:|---|---:|")
    worst = 0.0
    for fault, script in [*FAULTS.items(), ("connection refused", None)]:
        for kind in ("tei", "v1", "cohere"):
            for path in ("sync", "async"):
                with RerankServer() as server:
                    if script is not None:
                        server.faults.extend(script)
                    url = closed_port() if script is None else server.url
                    scorer = make(kind, url, args.deadline, args.timeout)
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
    print(f"\nslowest faulty call: {worst:.2f} s against a deadline of {args.deadline} s")


if __name__ == "__main__":
    main()
