"""Batch jobs: SciFact queries x BM25 candidates reranked by the MiniLM-L6 cross-encoder (the compute
of ms-marco-MiniLM-L-6-v2), four ways on this machine, in one run:

* a plain loop over ``rerank`` (one query at a time, the model in this process),
* ``rerank_dataset`` on the local engine (blocks of queries, pairs length-sorted across queries),
* ``rerank_dataset`` on Ray Data, one worker of all CPUs and one worker per CPU (the Ray cluster's
  start-up is timed apart),
* a re-run of the finished local job (every shard skipped: the cost of resuming).

Each repetition takes fresh queries (repetition r: the r-th slice of the test queries); every
contender scores the same slice. Wall times include building the model (every contender builds its
own, after one untimed build has imported the libraries); the engines' compute-only rate (pairs / the
seconds their workers spent on shards, summed over workers) is printed apart. Also prints the padding each batching makes
(padded tokens / real tokens) on the same pairs, and the CPU with its flags.

    python benchmarks/batch.py [--queries 300] [--candidates 100] [--max-length 512] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common


def _padding(
    tokenizer: Any, rows: list[dict[str, Any]], block: int, max_length: int, batch_size: int
) -> tuple[float, float]:
    """Padded / real tokens of per-query length-sorted batches and of the engine's block rounds."""
    from rerankers_plugins.ops.batching import length_sorted_batches

    by_query: dict[str, list[int]] = {}
    for r in rows:
        n = len(tokenizer(r["query"], r["text"], truncation=True, max_length=max_length)["input_ids"])
        by_query.setdefault(r["query_id"], []).append(n)

    def padded(groups: list[list[int]]) -> int:
        return sum(
            len(b) * max(g[i] for i in b) for g in groups for b in length_sorted_batches(g, batch_size)
        )

    real = sum(sum(g) for g in by_query.values())
    queries = list(by_query.values())
    blocks = [[n for q in queries[i : i + block] for n in q] for i in range(0, len(queries), block)]
    return padded(queries) / real, padded(blocks) / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="queries per repetition")
    parser.add_argument("--candidates", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--max-length", type=int, default=512, help="the cross-encoder's token window")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--block-queries", type=int, default=16)
    parser.add_argument("--shard-queries", type=int, default=4, help="queries per shard (several per worker)")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    import torch

    from rerankers_plugins import Candidate, CrossEncoderScorer, rerank
    from rerankers_plugins.batch import rerank_dataset
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever

    data = load_beir(_common.DATA)
    bm25 = BM25Retriever(data.corpus)
    model = _common.minilm_cross_encoder_dir()
    spec = {"scorer": "cross-encoder", "model": model, "max_length": args.max_length}
    qids = sorted(data.queries)
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    loop_scorer = CrossEncoderScorer(model, max_length=args.max_length, scheduler=False)
    times: dict[str, list[float]] = {}
    compute: dict[str, list[float]] = {"local": [], "ray1": [], "rayn": []}
    ray_start = None
    if not args.no_ray:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=torch.get_num_threads(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
    pairs = 0
    padding = (0.0, 0.0)
    for rep in range(args.repeats):
        chunk = qids[rep * args.queries : (rep + 1) * args.queries]
        rows = [
            {
                "query_id": q,
                "query": data.queries[q],
                "doc_id": c.id,
                "text": c.text,
                "retrieval_score": c.retrieval_score,
            }
            for q, cands in zip(
                chunk, bm25.retrieve_many([data.queries[q] for q in chunk], args.candidates), strict=True
            )
            for c in cands
        ]
        pairs = len(rows)
        src = work / f"in-{rep}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if rep == 0:
            padding = _padding(
                loop_scorer.tokenizer, rows, args.block_queries, args.max_length, loop_scorer.batch_size
            )

        def loop(rows: list[dict[str, Any]] = rows) -> None:
            scorer = CrossEncoderScorer(model, max_length=args.max_length, scheduler=False)
            by_q: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                by_q.setdefault(r["query_id"], []).append(r)
            for rs in by_q.values():
                rerank(rs[0]["query"], [Candidate(r["text"], id=r["doc_id"]) for r in rs], scorer)

        def job(name: str, rep: int = rep, src: Path = src, **kw: Any) -> Any:
            out = work / f"{name}-{rep}"
            summary = rerank_dataset(
                spec,
                src,
                out,
                block_queries=args.block_queries,
                shard_queries=args.shard_queries,
                progress=False,
                **kw,
            )
            if summary.pairs:
                compute[name].append(sum(summary.workers.values()))
            return summary

        contenders = {
            "plain loop over rerank": loop,
            "local engine": lambda: job("local"),
        }
        if not args.no_ray:
            cpus = torch.get_num_threads()
            contenders["ray, 1 worker x all CPUs"] = lambda cpus=cpus: job(
                "ray1", engine="ray", actors=1, num_cpus=cpus
            )
            contenders[f"ray, {cpus} workers x 1 CPU"] = lambda: job("rayn", engine="ray", num_cpus=1)
        contenders["re-run of the finished local job"] = lambda: job("local")
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            print(f"rep {rep} {name}: {times[name][-1]:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    print()
    print(_common.cpu_description())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.repeats} repetition(s) of {args.queries} "
        f"queries x {args.candidates} BM25 candidates ({pairs} pairs), max_length {args.max_length}"
    )
    if ray_start is not None:
        print(f"Ray local cluster start: {ray_start:.1f} s (not in the times below)")
    loop_s = statistics.median(times["plain loop over rerank"])
    print("\n| contender | wall s (median) | pairs/s | vs the plain loop |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        rate = "-" if name.startswith("re-run") else f"{pairs / m:.1f}"
        print(f"| {name} | {m:.1f} | {rate} | {loop_s / m:.2f}x |")
    for name, label in (("local", "local engine"), ("ray1", "ray, 1 worker"), ("rayn", "ray, 1-CPU workers")):
        if compute[name]:
            print(
                f"compute only, {label}: {statistics.median(compute[name]):.1f} pairs/s (summed over workers)"
            )
    print(
        f"\npadded / real tokens: per query {padding[0]:.3f}, blocks of {args.block_queries} queries {padding[1]:.3f}"
    )


if __name__ == "__main__":
    main()
