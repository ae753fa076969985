"""Fine-tune a cross-encoder on SciFact's train split, then the SciFact test table with it.

Training uses ``rerankers_plugins.train.fine_tune`` from the all-MiniLM-L6-v2 encoder (the packaged
weights; a new one-label head). Settings are fixed in advance or chosen on the dev queries carved
from train (10 %, seeded), never on test. The model is cached: a rerun with the same settings skips
training.

Quality: SciFact test (300 queries), BM25 top-100 (bm25s), metrics from ranx. The cross-encoder is
wrapped in one in-memory ``CachedScorer`` shared by every pipeline, so each (query, document) pair is
scored once; latency per query is therefore measured separately, uncached, on the first
``--latency-queries`` test queries.

    python benchmarks/train.py [--loss bce] [--per-query 8] [--epochs 1] [--max-length 256] [--lr 2e-5] [--dev-only]
    python benchmarks/train.py --loss margin-mse --teacher "benchmarks/scifact_pipelines.toml#hybrid"
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import _common

log = logging.getLogger("train")


def build(ce: Any, maxsim: Any) -> dict[str, Any]:
    """The table's pipelines around one cross-encoder (cached or not) and MaxSim."""
    from rerankers_plugins import Cascade, Hybrid, Signal, Stage

    def signals(weights: tuple[float, float, float]) -> list[Any]:
        return [
            Signal(ce, weights[0], name="ce"),
            Signal(maxsim, weights[1], name="maxsim"),
            Signal("retrieval", weights[2], name="bm25"),
        ]

    return {
        "fine-tuned CE": ce,
        "Hybrid(CE 0.5, MaxSim 0.35, BM25 0.15)": Hybrid(signals((0.5, 0.35, 0.15))),
        "Hybrid(CE, MaxSim, BM25; RRF k=60)": Hybrid(signals((1, 1, 1)), method="rrf"),
        "Cascade(MaxSim keeps 30 > CE keeps 10)": Cascade(
            [Stage(maxsim, keep=30, name="maxsim"), Stage(ce, keep=10, name="ce")]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="bce", choices=["bce", "listwise", "margin-mse"])
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--per-query", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--dev-depth", type=int, default=30)
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all 300)")
    parser.add_argument("--latency-queries", type=int, default=10)
    parser.add_argument(
        "--dev-only", action="store_true", help="train (or reuse) and report the dev metrics; no test table"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from rerankers_plugins import CachedScorer, ColBERTScorer, CrossEncoderScorer, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.harness import evaluate
    from rerankers_plugins.train import fine_tune

    tag = f"{args.loss}-pq{args.per_query}-ep{args.epochs:g}-len{args.max_length}-bs{args.batch_size}-lr{args.lr:g}"
    if args.teacher:
        tag += "-teacher-" + "".join(ch if ch.isalnum() else "_" for ch in args.teacher)[-40:]
    out = _common.CACHE / "scifact-rerankers" / tag
    if (out / "training.json").is_file():
        import json

        info = json.loads((out / "training.json").read_text())
        log.info("reusing %s (trained in %.0f s)", out, info["seconds"])
    else:
        result = fine_tune(
            _common.DATA,
            _common.minilm_dir(),
            out,
            loss=args.loss,
            teacher=args.teacher,
            per_query=args.per_query,
            epochs=args.epochs,
            max_length=args.max_length,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            dev_depth=args.dev_depth,
        )
        info = {
            "seconds": result.seconds,
            "steps": result.steps,
            "dev_metrics": result.dev_metrics,
            "train_queries": result.train_queries,
        }
    print(
        f"trained {tag}: {info['steps']} steps, {info['seconds']:.0f} s (mining + training), "
        f"{info['train_queries']} train queries; dev: {info['dev_metrics']}"
    )

    if args.dev_only:
        return
    test = load_beir(_common.DATA, "test")
    ce = CrossEncoderScorer(str(out))
    maxsim = ColBERTScorer("minilm", cache_dir=_common.CACHE / "colbert")
    cached = CachedScorer(ce)
    pipelines = build(cached, maxsim)
    report = evaluate(
        test, pipelines, k=100, queries=args.queries, metrics=("ndcg@10", "mrr@10"), progress=True
    )

    # uncached latency on the first test queries
    from rerankers_plugins.eval.first_stage import BM25Retriever

    qids = sorted(test.queries)[: args.latency_queries]
    first = BM25Retriever(test.corpus).retrieve_many([test.queries[q] for q in qids], k=100)
    uncached = build(ce, maxsim)
    latency = {}
    for name, pipeline in uncached.items():
        times = []
        for q, cands in zip(qids, first, strict=True):
            t0 = time.perf_counter()
            rerank(test.queries[q], cands, pipeline)
            times.append((time.perf_counter() - t0) * 1000)
        latency[name] = statistics.median(times)

    print(f"\nSciFact test, {report.queries} queries, BM25 top-100; cross-encoder trained with {tag}\n")
    print("| pipeline | NDCG@10 | MRR@10 | median ms/query (uncached, CPU) |")
    print("|---|---:|---:|---:|")
    for r in report.results:
        ms = latency.get(r.name)
        print(
            f"| {r.name} | {r.metrics['ndcg@10']:.3f} | {r.metrics['mrr@10']:.3f} | {ms:.0f} |"
            if ms
            else f"| {r.name} | {r.metrics['ndcg@10']:.3f} | {r.metrics['mrr@10']:.3f} | - |"
        )


if __name__ == "__main__":
    main()
