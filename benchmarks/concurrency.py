"""Many users, one model: concurrent requests to one shared cross-encoder through the LangChain adapter.

Each burst starts ``in flight`` requests at once (threads calling ``compress_documents``, or
coroutines gathered on one event loop calling ``acompress_documents``); each request is a fresh
SciFact query with its own random ``--candidates`` abstracts, reranked to a top 5. Contenders, on the
same MiniLM-L6 cross-encoder weights (the compute of ms-marco-MiniLM-L-6-v2): our
``RerankCompressor`` with the scheduler (the default), ours with ``scheduler=False`` (each request
computes in its own thread, as before), and LangChain's ``CrossEncoderReranker``. Prints requests/s,
p50 / p95 / max latency over every request of every burst, and the p50 a first-come-first-served
queue would give at the measured throughput ((in flight + 1) / 2 / throughput).

    python benchmarks/concurrency.py [--in-flight 1 4 16 64] [--candidates 30 100] [--bursts 2]
    python benchmarks/concurrency.py --scheduler '{"streams": 2, "threads": 1}' --no-unscheduled --no-peer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _common


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def burst_threads(
    compress: Callable[[list[Any], str], Any], requests: list[tuple[str, list[Any]]]
) -> list[float]:
    def one(req: tuple[str, list[Any]]) -> float:
        start = time.perf_counter()
        compress(req[1], req[0])
        return time.perf_counter() - start

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def burst_async(
    acompress: Callable[[list[Any], str], Any], requests: list[tuple[str, list[Any]]]
) -> list[float]:
    async def one(req: tuple[str, list[Any]]) -> float:
        start = time.perf_counter()
        await acompress(req[1], req[0])
        return time.perf_counter() - start

    async def main() -> list[float]:
        return list(await asyncio.gather(*(one(r) for r in requests)))

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--candidates", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--modes", nargs="+", default=["threads", "async"], choices=["threads", "async"])
    parser.add_argument(
        "--bursts",
        type=int,
        default=2,
        help="bursts per cell (fresh requests each); at least 16 requests per cell",
    )
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--unscheduled", action=argparse.BooleanOptionalAction, default=True, help="ours with scheduler=False"
    )
    parser.add_argument(
        "--scheduler",
        type=json.loads,
        default={},
        help='the scheduler\'s options as JSON, e.g. \'{"streams": 2, "threads": 1}\' (threads is '
        "process-wide: run such a setting with --no-unscheduled --no-peer)",
    )
    parser.add_argument("--top-n", type=int, default=5)
    args = parser.parse_args()

    import torch
    from langchain_core.documents import Document

    from rerankers_plugins import CrossEncoderScorer
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.integrations.langchain import RerankCompressor

    path = _common.minilm_cross_encoder_dir()
    data = load_beir(_common.DATA)
    queries = list(data.queries.values())
    abstracts = [c.text for c in data.corpus]
    rng = random.Random(0)

    label = f"ours (scheduler {json.dumps(args.scheduler)})" if args.scheduler else "ours (scheduler)"
    contenders: dict[str, Any] = {
        label: RerankCompressor(
            scorer=CrossEncoderScorer(path, scheduler=args.scheduler or True), top_n=args.top_n
        )
    }
    if args.unscheduled:
        contenders["ours (scheduler=False)"] = RerankCompressor(
            scorer=CrossEncoderScorer(path, scheduler=False), top_n=args.top_n
        )
    if args.peer:
        from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        from langchain_community.cross_encoders import HuggingFaceCrossEncoder

        contenders["LangChain CrossEncoderReranker"] = CrossEncoderReranker(
            model=HuggingFaceCrossEncoder(model_name=path), top_n=args.top_n
        )

    def requests(n: int, k: int) -> list[tuple[str, list[Any]]]:
        return [
            (rng.choice(queries), [Document(page_content=t) for t in rng.sample(abstracts, k)])
            for _ in range(n)
        ]

    for comp in contenders.values():  # warm every contender up once
        comp.compress_documents(requests(1, 8)[0][1], "warm up")

    print(_common.cpu_description())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.bursts} bursts per cell "
        "(at least 16 requests)"
    )
    print()
    print(
        "| in flight | candidates | mode | contender | req/s | p50 s | p95 s | max s | FCFS p50 s at this req/s |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for k in args.candidates:
        for n in args.in_flight:
            for mode in args.modes:
                for name, comp in contenders.items():
                    latencies: list[float] = []
                    wall = 0.0
                    for _ in range(max(args.bursts, -(-16 // n))):
                        reqs = requests(n, k)
                        start = time.perf_counter()
                        if mode == "threads":
                            latencies += burst_threads(comp.compress_documents, reqs)
                        else:
                            latencies += burst_async(comp.acompress_documents, reqs)
                        wall += time.perf_counter() - start
                    rate = len(latencies) / wall
                    print(
                        f"| {n} | {k} | {mode} | {name} | {rate:.2f} | {statistics.median(latencies):.2f} | "
                        f"{_percentile(latencies, 0.95):.2f} | {max(latencies):.2f} | {(n + 1) / 2 / rate:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
