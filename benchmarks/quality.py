"""Quality on SciFact (BEIR test split): BM25 top-100 first stage, then each reranker.

NDCG@10, MRR@10 and Recall@100 come from ranx. Document vectors for late interaction are cached on
disk (``$RERANKERS_CACHE``, default ``~/.cache/rerankers-plugins``), so a rerun costs only the
queries.

    python benchmarks/quality.py [--queries N] [--candidates 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import _common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all)")
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("quality")

    from ranx import Qrels, Run, evaluate

    from rerankers_plugins import ColBERTScorer, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever

    data = load_beir(_common.DATA)
    qids = sorted(data.queries)[: args.queries]
    t0 = time.perf_counter()
    retriever = BM25Retriever(data.corpus)
    first = dict(
        zip(qids, retriever.retrieve_many([data.queries[q] for q in qids], k=args.candidates), strict=True)
    )
    log.info("BM25 top-%d for %d queries in %.1f s", args.candidates, len(qids), time.perf_counter() - t0)

    qrels = Qrels({q: data.qrels[q] for q in qids})
    metrics = ["ndcg@10", "mrr@10", f"recall@{args.candidates}"]
    rows: list[tuple[str, dict[str, float], float | None]] = []

    def add(name: str, runs: dict[str, dict[str, float]], latencies: list[float] | None) -> None:
        scores = evaluate(qrels, Run(runs, name=name), metrics, make_comparable=True)
        rows.append((name, scores, statistics.median(latencies) if latencies else None))
        log.info("%s: %s", name, {k: round(v, 4) for k, v in scores.items()})

    add(
        "BM25 (bm25s, k1=1.2 b=0.75, stemming)",
        {q: {str(c.id): float(c.retrieval_score or 0) for c in first[q]} for q in qids},
        None,
    )

    colbert = ColBERTScorer(_common.minilm_dir(), cache_dir=_common.CACHE / "colbert")
    union = list(dict.fromkeys(c.text for q in qids for c in first[q]))
    t0 = time.perf_counter()
    encoded = colbert.index(union)
    log.info(
        "indexed %d candidate documents (%d encoded now) in %.1f s",
        len(union),
        encoded,
        time.perf_counter() - t0,
    )
    runs, lat = {}, []
    for q in qids:
        t0 = time.perf_counter()
        ranked = rerank(data.queries[q], first[q], colbert)
        lat.append((time.perf_counter() - t0) * 1000)
        # ranks, not raw scores, so that ties cannot reorder against the reranker's stable order
        runs[q] = {str(s.id): float(len(ranked) - s.rank) for s in ranked}
    add(f"BM25 + MaxSim, all-MiniLM-L6-v2 token embeddings ({colbert.layout}, cached)", runs, lat)

    print(f"\nSciFact test, {len(qids)} queries, BM25 top-{args.candidates} reranked\n")
    print(f"| pipeline | NDCG@10 | MRR@10 | Recall@{args.candidates} | median rerank ms/query |")
    print("|---|---:|---:|---:|---:|")
    for name, s, ms in rows:
        lat_s = f"{ms:.1f}" if ms is not None else "-"
        print(
            f"| {name} | {s['ndcg@10']:.3f} | {s['mrr@10']:.3f} | {s[f'recall@{args.candidates}']:.3f} | {lat_s} |"
        )


if __name__ == "__main__":
    main()
