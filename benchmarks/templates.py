"""Document templates on SciFact: the title put into what the reranker reads, or the text alone.

SciFact's corpus has a title and an abstract per document. The candidates here carry the abstract
as their text and the title in metadata (``read_corpus`` joins them; this script splits them
again), and each reranker runs twice on the same BM25 candidates: ``document_template="{title}.
{text}"`` and no template (the abstract alone). NDCG@10 per query, compared query by query
(paired randomization test, 10,000 sign flips, and a bootstrap interval of the difference).

Rerankers: MaxSim over all-MiniLM-L6-v2 token embeddings (document vectors cached on disk; the
second run is fast), with ``--bi-encoder`` the all-MiniLM-L6-v2 bi-encoder, and a cross-encoder: ``--cross-encoder DIR`` (a trained one),
else one trained here by ``fine_tune`` from all-MiniLM-L6-v2 on SciFact's train split with the
settings below (cached under ``$RERANKERS_CACHE``, so a rerun skips training).

    python benchmarks/templates.py [--queries 300] [--candidates 100] [--ce-queries 100] [--ce-candidates 30]
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import _common

log = logging.getLogger("templates")

TEMPLATE = "{title}. {text}"  # what read_corpus gives every BEIR document as its text


def split_titles(first: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The candidates with the abstract alone as their text and the title in metadata."""
    from rerankers_plugins import Candidate

    out = {}
    for q, cands in first.items():
        fixed = []
        for c in cands:
            title = c.metadata.get("title") or ""
            text = c.text[len(title) + 2 :] if title and c.text.startswith(f"{title}. ") else c.text
            fixed.append(
                Candidate(text, id=c.id, metadata=dict(c.metadata), retrieval_score=c.retrieval_score)
            )
        out[q] = fixed
    return out


def ndcg_per_query(
    scorer: Any, queries: dict[str, str], first: dict[str, list[Any]], qrels: Any
) -> list[float]:
    from rerankers_plugins import rerank
    from rerankers_plugins.eval.metrics import score_query

    out = []
    for q, text in queries.items():
        ranked = rerank(text, first[q], scorer)
        out.append(score_query("ndcg@10", qrels[q], [str(s.id) for s in ranked]))
    return out


def trained_cross_encoder(max_length: int) -> str:
    from rerankers_plugins.train import fine_tune

    out = _common.CACHE / f"templates-ce-bce-pq4-len{max_length}"
    if (out / "config.json").is_file():
        return str(out)
    t0 = time.perf_counter()
    fine_tune(
        _common.DATA,
        _common.minilm_dir(),
        out,
        per_query=4,
        epochs=1.0,
        max_length=max_length,
        learning_rate=5e-5,
        dev_fraction=0.1,
        dev_depth=30,
        progress=False,
        overwrite=True,
    )
    log.info("trained the cross-encoder in %.0f s", time.perf_counter() - t0)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all 300)")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--ce-queries", type=int, default=100, help="test queries for the cross-encoder")
    parser.add_argument("--ce-candidates", type=int, default=30, help="BM25 candidates for the cross-encoder")
    parser.add_argument("--cross-encoder", default=None, help="a trained cross-encoder directory")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--skip-cross-encoder", action="store_true")
    parser.add_argument("--skip-maxsim", action="store_true")
    parser.add_argument(
        "--bi-encoder", action="store_true", help="add the bi-encoder (slow: no document cache)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from rerankers_plugins import BiEncoderScorer, ColBERTScorer, CrossEncoderScorer
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.eval.metrics import score_query
    from rerankers_plugins.eval.stats import paired_test

    print(_common.cpu_description())
    test = load_beir(_common.DATA, "test")
    queries = {q: test.queries[q] for q in sorted(test.queries)[: args.queries]}
    retriever = BM25Retriever(test.corpus)  # BM25 over title + text, as in the quality table
    first = split_titles(
        dict(zip(queries, retriever.retrieve_many(list(queries.values()), k=args.candidates), strict=True))
    )
    qrels = {q: dict(test.qrels[q]) for q in queries}

    rows = []

    def compare(label: str, make: Any, qs: dict[str, str], cands: dict[str, list[Any]]) -> None:
        t0 = time.perf_counter()
        titled = ndcg_per_query(make(TEMPLATE), qs, cands, qrels)
        plain = ndcg_per_query(make(None), qs, cands, qrels)
        test_ = paired_test(titled, plain)
        n = len(qs)
        k = len(next(iter(cands.values())))
        rows.append((label, n, k, sum(titled) / n, sum(plain) / n, test_))
        log.info("%s: %s (%.0f s)", label, test_, time.perf_counter() - t0)

    cache = _common.CACHE / "colbert"
    if not args.skip_maxsim:
        compare(
            "MaxSim, all-MiniLM-L6-v2 tokens",
            lambda t: ColBERTScorer(_common.minilm_dir(), cache_dir=cache, document_template=t),
            queries,
            first,
        )
    if args.bi_encoder:  # every candidate encoded per query (no document cache): slow on a CPU
        compare(
            "bi-encoder, all-MiniLM-L6-v2 cosine",
            lambda t: BiEncoderScorer(_common.minilm_dir(), document_template=t),
            queries,
            first,
        )
    if not args.skip_cross_encoder:
        ce_dir = args.cross_encoder or trained_cross_encoder(args.max_length)
        ce_q = dict(list(queries.items())[: args.ce_queries])
        ce_first = {q: first[q][: args.ce_candidates] for q in ce_q}
        compare(
            f"cross-encoder ({'given' if args.cross_encoder else 'trained here, 1 epoch BCE'}, max_length {args.max_length})",
            lambda t: CrossEncoderScorer(ce_dir, max_length=args.max_length, document_template=t),
            ce_q,
            ce_first,
        )

    def bm25(qs: dict[str, str]) -> float:  # the first stage's own order (over title + text)
        return sum(score_query("ndcg@10", qrels[q], [str(c.id) for c in first[q]]) for q in qs) / len(qs)

    print(f"\nSciFact test, BM25 candidates, NDCG@10: document_template={TEMPLATE!r} vs the abstract alone")
    print(f"BM25 alone: {bm25(queries):.3f} on the {len(queries)} queries", end="")
    if not args.skip_cross_encoder:
        print(
            f", {bm25(dict(list(queries.items())[: args.ce_queries])):.3f} on the first {args.ce_queries}",
            end="",
        )
    print("\n")
    print("| reranker | queries x candidates | title + text | text alone | difference [95% CI], p |")
    print("|---|---:|---:|---:|---|")
    for label, n, k, titled, plain, t in rows:
        print(f"| {label} | {n} x {k} | {titled:.3f} | {plain:.3f} | {t} |")


if __name__ == "__main__":
    main()
