"""Quality on SciFact (BEIR test split): BM25 top-100 first stage, then rerankers and strategies.

NDCG@10, MRR@10 and Recall@100 come from ranx. Fusion weights and calibration are fitted on the
*train* qrels only; the table reports the test split. Document vectors for late interaction are
cached on disk (``$RERANKERS_CACHE``, default ``~/.cache/rerankers-plugins``), so a rerun costs
only the queries.

    python benchmarks/quality.py [--queries N] [--candidates 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import _common

log = logging.getLogger("quality")


def run_pipeline(
    name: str, scorer: Any, queries: dict[str, str], first: dict[str, list[Any]], top_n: int | None = None
):
    from rerankers_plugins import rerank

    runs, lat = {}, []
    for q, text in queries.items():
        t0 = time.perf_counter()
        ranked = rerank(text, first[q], scorer, top_n=top_n)
        lat.append((time.perf_counter() - t0) * 1000)
        # ranks, not raw scores, so that ties cannot reorder against the reranker's stable order
        runs[q] = {str(s.id): float(len(ranked) - s.rank) for s in ranked}
    log.info("%s: %d queries, median %.1f ms", name, len(queries), statistics.median(lat))
    return runs, lat


def tune_weight(
    colbert: Any, queries: dict[str, str], first: dict[str, list[Any]], qrels: Any
) -> tuple[float, float]:
    """Grid-search the MaxSim weight of a min-max fusion with the BM25 retrieval score (train only)."""
    from ranx import Run, evaluate

    from rerankers_plugins.ops.fusion import minmax, weighted_sum

    signals = {}
    for q, text in queries.items():
        maxsim = colbert.score(text, [c.text for c in first[q]])
        bm25 = [float(c.retrieval_score or 0.0) for c in first[q]]
        signals[q] = (minmax(maxsim), minmax(bm25))
    best = (0.0, -1.0)
    for step in range(21):
        w = step / 20
        runs = {}
        for q, (m, b) in signals.items():
            fused = weighted_sum([m, b], [w, 1 - w])
            runs[q] = {str(c.id): fused[i] for i, c in enumerate(first[q])}
        ndcg = float(evaluate(qrels, Run(runs), "ndcg@10", make_comparable=True))
        if ndcg > best[1]:
            best = (w, ndcg)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all)")
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from ranx import Qrels, Run, evaluate

    from rerankers_plugins import BM25Scorer, Cascade, ColBERTScorer, Hybrid, Signal, Stage, calibrate
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.ops.calibration import expected_calibration_error

    test = load_beir(_common.DATA, "test")
    train = load_beir(_common.DATA, "train")
    test_q = {q: test.queries[q] for q in sorted(test.queries)[: args.queries]}
    train_q = dict(sorted(train.queries.items()))
    retriever = BM25Retriever(test.corpus)
    k = args.candidates
    first = {}
    for queries in (test_q, train_q):
        first.update(dict(zip(queries, retriever.retrieve_many(list(queries.values()), k=k), strict=True)))
    log.info("BM25 top-%d for %d test + %d train queries", k, len(test_q), len(train_q))

    colbert = ColBERTScorer(_common.minilm_dir(), cache_dir=_common.CACHE / "colbert")
    union = list(dict.fromkeys(c.text for q in first for c in first[q]))
    t0 = time.perf_counter()
    encoded = colbert.index(union)
    log.info(
        "indexed %d candidate documents (%d encoded now) in %.1f s",
        len(union),
        encoded,
        time.perf_counter() - t0,
    )

    train_qrels = Qrels({q: train.qrels[q] for q in train_q})
    w, train_ndcg = tune_weight(colbert, train_q, first, train_qrels)
    log.info(
        "tuned on train: MaxSim weight %.2f, BM25 weight %.2f (train NDCG@10 %.4f)", w, 1 - w, train_ndcg
    )

    qrels = Qrels({q: test.qrels[q] for q in test_q})
    metrics = ["ndcg@10", "mrr@10", f"recall@{k}"]
    rows: list[tuple[str, dict[str, float], float | None]] = []

    def add(name: str, runs: dict[str, dict[str, float]], lat: list[float] | None) -> None:
        scores = evaluate(qrels, Run(runs, name=name), metrics, make_comparable=True)
        rows.append((name, scores, statistics.median(lat) if lat else None))
        log.info("%s: %s", name, {m: round(float(v), 4) for m, v in scores.items()})

    add(
        "BM25 (bm25s, k1=1.2 b=0.75, stemming)",
        {q: {str(c.id): float(c.retrieval_score or 0) for c in first[q]} for q in test_q},
        None,
    )
    add(
        "BM25 + MaxSim, all-MiniLM-L6-v2 token embeddings (cached)",
        *run_pipeline("maxsim", colbert, test_q, first),
    )
    hybrid = Hybrid([Signal(colbert, w, name="maxsim"), Signal("retrieval", 1 - w, name="bm25")])
    add(
        f"BM25 + Hybrid(MaxSim {w:.2f}, BM25 {1 - w:.2f}, min-max; weights tuned on train)",
        *run_pipeline("hybrid", hybrid, test_q, first),
    )
    rrf = Hybrid([Signal(colbert, 1, name="maxsim"), Signal("retrieval", 1, name="bm25")], method="rrf")
    add("BM25 + Hybrid(MaxSim, BM25; reciprocal rank fusion k=60)", *run_pipeline("rrf", rrf, test_q, first))
    cascade = Cascade(
        [Stage(BM25Scorer(), keep=30, name="bm25-on-candidates"), Stage(hybrid, keep=10, name="hybrid")]
    )
    add(
        "BM25 + Cascade(BM25 over candidates keep 30 > Hybrid keep 10)",
        *run_pipeline("cascade", cascade, test_q, first),
    )

    print(
        f"\nSciFact test, {len(test_q)} queries, BM25 top-{k} reranked (a cascade returns its last stage's 10)\n"
    )
    print(f"| pipeline | NDCG@10 | MRR@10 | Recall@{k} | median rerank ms/query |")
    print("|---|---:|---:|---:|---:|")
    for name, s, ms in rows:
        lat_s = f"{ms:.1f}" if ms is not None else "-"
        print(f"| {name} | {s['ndcg@10']:.3f} | {s['mrr@10']:.3f} | {s[f'recall@{k}']:.3f} | {lat_s} |")

    # Calibration of the MaxSim similarity: fitted on train pairs, judged on test pairs.
    def pairs(data: Any, queries: dict[str, str]) -> list[tuple[str, str, int]]:
        out = []
        texts = {c.id: c.text for c in data.corpus}
        for q, text in queries.items():
            rel = data.qrels[q]
            out += [(text, texts[d], 1) for d in rel if d in texts]
            out += [(text, c.text, 0) for c in first[q][:10] if c.id not in rel][:5]
        return out

    fitted = calibrate(colbert, pairs(train, train_q), method="platt")
    held_out = pairs(test, test_q)
    probs = [fitted.score(q, [t])[0] for q, t, _ in held_out]
    labels = [y for _, _, y in held_out]
    raw = [(colbert.score(q, [t])[0] + 1) / 2 for q, t, _ in held_out]
    kept = [y for p, y in zip(probs, labels, strict=True) if p >= 0.7]
    print(
        f"\nCalibration of MaxSim (Platt, {fitted.report['pairs']} train pairs): test ECE "
        f"{expected_calibration_error(raw, labels):.3f} as (cosine+1)/2 -> {expected_calibration_error(probs, labels):.3f} calibrated; "
        f"precision of test pairs at calibrated p >= 0.7: {sum(kept) / max(len(kept), 1):.2f} ({len(kept)} pairs)"
    )


if __name__ == "__main__":
    main()
