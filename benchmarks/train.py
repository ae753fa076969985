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
    python benchmarks/train.py --arch poly-encoder --cross-encoder DIR   # poly-encoder table
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


def epoch_snapshots(root: Any) -> Any:
    """A trainer callback saving the model at the end of every epoch under ``root/epoch-N``."""
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):  # type: ignore[misc]
        def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            n = round(state.epoch or 0)
            (root / f"epoch-{n}" / "dev.json").unlink(missing_ok=True)  # metrics of older weights
            model.save_pretrained(str(root / f"epoch-{n}"))
            log.info("saved the epoch-%d snapshot (step %d)", n, state.global_step)

    return Snapshot()


def pick_epoch(
    snapshots: list[Any], dev_ids: list[str], depth: int, arch: str = "cross-encoder"
) -> tuple[Any, dict[str, float]]:
    """Score every epoch snapshot on the dev queries; the best by NDCG@10 (earliest on ties)."""
    import json

    from rerankers_plugins.eval.beir import BeirData, load_beir
    from rerankers_plugins.eval.harness import evaluate

    train = load_beir(_common.DATA, "train")
    dev = BeirData(
        corpus=train.corpus,
        queries={q: train.queries[q] for q in dev_ids},
        qrels={q: dict(train.qrels[q]) for q in dev_ids},
    )
    scores: dict[str, float] = {}
    for snap in snapshots:
        done = snap / "dev.json"
        if not done.is_file():
            report = evaluate(dev, {"m": load_scorer(arch, snap)}, k=depth, metrics=("ndcg@10", "mrr@10"))
            done.write_text(json.dumps(next(r.metrics for r in report.results if r.name == "m")))
        metrics = json.loads(done.read_text())
        scores[snap.name] = metrics["ndcg@10"]
        print(f"dev {snap.name}: NDCG@10 {metrics['ndcg@10']:.4f}, MRR@10 {metrics['mrr@10']:.4f}")
    best = max(snapshots, key=lambda s: (scores[s.name], -snapshots.index(s)))
    return best, scores


def corpus_bi_encoder(texts: list[str]) -> Any:
    """all-MiniLM-L6-v2 cosine with the corpus embedded once (as an index would): reranking costs
    one query encoding, like MaxSim and the poly-encoder with their cached document vectors."""
    from rerankers_plugins import BaseScorer, BiEncoderScorer, ScoreScale

    bi = BiEncoderScorer("minilm")
    vectors = dict(zip(texts, bi.embed_documents(texts), strict=True))

    class CorpusBiEncoder(BaseScorer):
        name = "bi-encoder"
        scale = ScoreScale.SIMILARITY

        def score(self, query: str, docs: Any) -> list[float]:
            q = bi.embed_query(query)
            missing = [t for t in dict.fromkeys(docs) if t not in vectors]
            if missing:
                vectors.update(zip(missing, bi.embed_documents(missing), strict=True))
            return [float(vectors[t] @ q) for t in docs]

    return CorpusBiEncoder()


def load_scorer(arch: str, path: Any) -> Any:
    from rerankers_plugins import CrossEncoderScorer, PolyEncoderScorer

    if arch == "poly-encoder":
        return PolyEncoderScorer(str(path), cache_dir=_common.CACHE / "poly-codes")
    return CrossEncoderScorer(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cross-encoder", choices=["cross-encoder", "poly-encoder"])
    parser.add_argument("--codes", type=int, default=16, help="poly-encoder document codes")
    parser.add_argument(
        "--cross-encoder",
        default=None,
        help="with --arch poly-encoder: the fine-tuned cross-encoder directory to compare and cascade with",
    )
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

    import json

    from rerankers_plugins import CachedScorer, Cascade, ColBERTScorer, Stage, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.harness import evaluate
    from rerankers_plugins.train import fine_tune

    tag = f"{args.loss}-pq{args.per_query}-ep{args.epochs:g}-len{args.max_length}-bs{args.batch_size}-lr{args.lr:g}"
    if args.arch == "poly-encoder":
        tag = f"poly{args.codes}-{tag}"
    if args.teacher:
        tag += "-teacher-" + "".join(ch if ch.isalnum() else "_" for ch in args.teacher)[-40:]
    out = _common.CACHE / "scifact-rerankers" / tag
    snaps_root = out.parent / (tag + ".epochs")
    if (out / "bench.json").is_file():
        info = json.loads((out / "bench.json").read_text())
        log.info("reusing %s (trained in %.0f s)", out, info["seconds"])
    else:
        result = fine_tune(
            _common.DATA,
            _common.minilm_dir(),
            out,
            arch=args.arch,
            codes=args.codes,
            loss=args.loss,
            teacher=args.teacher,
            per_query=args.per_query,
            epochs=args.epochs,
            max_length=args.max_length,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            dev_depth=args.dev_depth,
            callbacks=[epoch_snapshots(snaps_root)] if args.epochs > 1 else [],
        )
        info = {
            "seconds": result.seconds,
            "steps": result.steps,
            "dev_metrics": result.dev_metrics,
            "train_queries": result.train_queries,
            "dev_query_ids": list(result.dev_query_ids),
        }
        (out / "bench.json").write_text(json.dumps(info))
    print(
        f"trained {tag}: {info['steps']} steps, {info['seconds']:.0f} s (mining + training), "
        f"{info['train_queries']} train queries; dev: {info['dev_metrics']}"
    )

    chosen = out
    snapshots = sorted(snaps_root.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    if len(snapshots) > 1:
        chosen, _ = pick_epoch(snapshots, info["dev_query_ids"], args.dev_depth, args.arch)
        print(f"chosen on dev: {chosen.name}")
    if args.dev_only:
        return
    test = load_beir(_common.DATA, "test")
    maxsim = ColBERTScorer("minilm", cache_dir=_common.CACHE / "colbert")
    # cross-encoder scores persist in one SQLite file (keyed by the model's settings), so a later
    # run (the poly-encoder's table, a rerun) reuses every pair already scored
    scores_db = _common.CACHE / "scifact-rerankers" / "ce-scores.sqlite"
    if args.arch == "poly-encoder":
        if not args.cross_encoder:
            parser.error("--arch poly-encoder needs --cross-encoder DIR (the fine-tuned cross-encoder)")
        ce = load_scorer("cross-encoder", args.cross_encoder)
        poly = load_scorer("poly-encoder", chosen)
        poly.index([c.text for c in test.corpus])  # document codes computed once, ahead of queries
        bi = corpus_bi_encoder([c.text for c in test.corpus])

        def build_poly(ce_like: Any) -> dict[str, Any]:
            return {
                "bi-encoder (all-MiniLM-L6-v2 cosine, corpus embedded)": bi,
                "MaxSim (all-MiniLM-L6-v2 tokens, cached)": maxsim,
                "fine-tuned CE": ce_like,
                "poly-encoder (codes cached)": poly,
                "Cascade(poly keeps 30 > CE keeps 10)": Cascade(
                    [Stage(poly, keep=30, name="poly"), Stage(ce_like, keep=10, name="ce")]
                ),
            }

        pipelines = build_poly(CachedScorer(ce, path=scores_db))
        uncached = build_poly(ce)
    else:
        ce = load_scorer("cross-encoder", chosen)
        pipelines = build(CachedScorer(ce, path=scores_db), maxsim)
        uncached = build(ce, maxsim)
    report = evaluate(
        test, pipelines, k=100, queries=args.queries, metrics=("ndcg@10", "mrr@10"), progress=True
    )

    # latency on the first test queries: cross-encoder uncached; MaxSim / poly-encoder vectors cached
    from rerankers_plugins.eval.first_stage import BM25Retriever

    qids = sorted(test.queries)[: args.latency_queries]
    first = BM25Retriever(test.corpus).retrieve_many([test.queries[q] for q in qids], k=100)
    latency = {}
    for name, pipeline in uncached.items():
        times = []
        for q, cands in zip(qids, first, strict=True):
            t0 = time.perf_counter()
            rerank(test.queries[q], cands, pipeline)
            times.append((time.perf_counter() - t0) * 1000)
        latency[name] = statistics.median(times)

    print(f"\nSciFact test, {report.queries} queries, BM25 top-100; {args.arch} {tag} ({chosen.name})\n")
    print("| pipeline | NDCG@10 | MRR@10 | median ms/query (CPU) |")
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
