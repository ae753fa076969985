"""Ranking agreement of bfloat16 with float32 on SciFact: does dtype="auto" change what users get?

For each test query, BM25 top-100 candidates are reranked twice by the same weights, once in
float32 and once in bfloat16, and the top-10 lists are compared.

    python benchmarks/agreement.py [--queries 30] [--candidates 100] [--compile]

``--compile`` runs the bfloat16 side with compiled transformer blocks (``compile=True``), as
``compile="auto"`` does where bfloat16 is chosen.
"""

from __future__ import annotations

import argparse
import statistics

import _common


def compare(name: str, fp32, bf16, data, qids, candidates: int, retriever) -> str:
    from rerankers_plugins import rerank

    overlaps, top1, max_diff = [], 0, 0.0
    for qid in qids:
        query = data.queries[qid]
        cands = retriever.retrieve(query, k=candidates)
        a = rerank(query, cands, fp32)
        b = rerank(query, cands, bf16)
        ta, tb = [s.id for s in a[:10]], [s.id for s in b[:10]]
        overlaps.append(len(set(ta) & set(tb)) / 10)
        top1 += ta[0] == tb[0]
        sa = {s.id: s.score for s in a}
        max_diff = max(max_diff, max(abs(sa[s.id] - s.score) for s in b))
    return (
        f"| {name} | {len(qids)} | {statistics.mean(overlaps):.3f} | {min(overlaps):.1f} | "
        f"{top1 / len(qids):.3f} | {max_diff:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--compile", action="store_true", help="bfloat16 with compiled blocks")
    args = parser.parse_args()

    from rerankers_plugins import BiEncoderScorer, CrossEncoderScorer
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever

    data = load_beir(_common.DATA)
    qids = sorted(data.queries)[: args.queries]
    retriever = BM25Retriever(data.corpus)
    ce = _common.minilm_cross_encoder_dir()
    bi = _common.minilm_dir()
    rows = [
        compare(
            "bi-encoder all-MiniLM-L6-v2 (trained weights), cosine",
            BiEncoderScorer(bi, dtype="float32"),
            BiEncoderScorer(bi, dtype="bfloat16", compile=args.compile),
            data,
            qids,
            args.candidates,
            retriever,
        ),
        compare(
            "cross-encoder MiniLM-L6 (ms-marco-MiniLM-L-6-v2 compute, untrained head), sigmoid",
            CrossEncoderScorer(ce, dtype="float32"),
            CrossEncoderScorer(ce, dtype="bfloat16", compile=args.compile),
            data,
            qids,
            args.candidates,
            retriever,
        ),
    ]
    side = "bfloat16 with compiled blocks" if args.compile else "bfloat16 eager"
    print(f"SciFact test, BM25 top-{args.candidates}, first {len(qids)} queries by id; {side} vs float32\n")
    print(
        "| model | queries | mean top-10 overlap | worst top-10 overlap | same top-1 | max abs score diff |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
