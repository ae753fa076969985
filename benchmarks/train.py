"""Fine-tune a cross-encoder on SciFact's train split, then the SciFact test table with it.

Training uses ``rerankers_plugins.train.fine_tune`` from the all-MiniLM-L6-v2 encoder (the packaged
weights; a new one-label head). Settings are fixed in advance or chosen on the dev queries carved
from train (10 %, seeded), never on test. The model is cached: a rerun with the same settings skips
training.

Quality: SciFact test (300 queries), BM25 top-100 (bm25s), metrics from ranx. The cross-encoder is
wrapped in one ``CachedScorer`` (a SQLite file) shared by every pipeline, so each (query, document)
pair is scored once; latency per query is therefore measured separately, uncached, on the first
``--latency-queries`` test queries. The best pipeline without a trained model (the MaxSim + BM25
hybrid) runs in the same table as the bar, and each row is compared with it query by query (mean
NDCG@10 difference, paired randomization test). ``--weights-on-dev`` adds a fusion row whose weights
are chosen on the dev queries. With ``--teacher``, the teacher's own dev metrics are printed too.

    python benchmarks/train.py [--loss bce] [--per-query 8] [--epochs 1] [--max-length 256] [--lr 2e-5] [--dev-only]
    python benchmarks/train.py --loss margin-mse --teacher "benchmarks/scifact_pipelines.toml#hybrid" \
        --per-query 4 --lr 5e-5 --epochs 3 --weights-on-dev
    python benchmarks/train.py --arch poly-encoder --cross-encoder DIR   # poly-encoder table
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time
from typing import Any

import _common

log = logging.getLogger("train")


BAR = "Hybrid(MaxSim 0.7, BM25 0.3): the bar"


def fusion(ce: Any, maxsim: Any, weights: tuple[float, float, float], method: str = "weighted") -> Any:
    """Hybrid(CE, MaxSim, BM25 retrieval score) with these weights (a zero weight drops the signal)."""
    from rerankers_plugins import Hybrid, Signal

    signals = [
        Signal(scorer, w, name=name)
        for scorer, w, name in zip((ce, maxsim, "retrieval"), weights, ("ce", "maxsim", "bm25"), strict=True)
        if w
    ]
    return Hybrid(signals, method=method)  # type: ignore[arg-type]


def build(ce: Any, maxsim: Any, dev_weights: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """The table's pipelines around one cross-encoder (cached or not) and MaxSim, with the best
    pipeline without it (the MaxSim + BM25 hybrid of benchmarks/scifact_pipelines.toml) as the bar."""
    from rerankers_plugins import Cascade, Stage

    pipelines = {
        BAR: fusion(ce, maxsim, (0, 0.7, 0.3)),
        "fine-tuned CE": ce,
        "Hybrid(CE 0.5, MaxSim 0.35, BM25 0.15)": fusion(ce, maxsim, (0.5, 0.35, 0.15)),
        "Hybrid(CE, MaxSim, BM25; RRF k=60)": fusion(ce, maxsim, (1, 1, 1), method="rrf"),
        "Cascade(MaxSim keeps 30 > CE keeps 10)": Cascade(
            [Stage(maxsim, keep=30, name="maxsim"), Stage(ce, keep=10, name="ce")]
        ),
    }
    if dev_weights:
        a, b, c = dev_weights
        pipelines[f"Hybrid(CE {a:g}, MaxSim {b:g}, BM25 {c:g}; weights chosen on dev)"] = fusion(
            ce, maxsim, dev_weights
        )
    return pipelines


def weights_on_dev(ce: Any, maxsim: Any, dev_ids: list[str], k: int) -> tuple[float, float, float]:
    """The fusion weights (a grid in steps of 0.1 over the simplex) with the best NDCG@10 on the dev
    queries carved from train (never trained on), on their BM25 top ``k``; earliest on ties."""
    from rerankers_plugins import CachedScorer
    from rerankers_plugins.eval.harness import evaluate

    memo = CachedScorer(maxsim)  # each dev pair scored once across the grid
    grid = [(a / 10, b / 10, round(1 - a / 10 - b / 10, 1)) for a in range(1, 11) for b in range(11 - a)]
    report = evaluate(
        dev_data(dev_ids),
        {str(w): fusion(ce, memo, w) for w in grid},
        k=k,
        metrics=("ndcg@10",),
        progress=False,
    )
    by_name = {r.name: r.metrics["ndcg@10"] for r in report.results}
    best = max(grid, key=lambda w: (by_name[str(w)], -grid.index(w)))
    top = sorted(grid, key=lambda w: -by_name[str(w)])[:5]
    print("dev NDCG@10 of the best fusion weights (CE, MaxSim, BM25):")
    for w in top:
        print(f"  {w}: {by_name[str(w)]:.4f}")
    return best


def paired_test(
    qrels: dict[str, dict[str, int]], run: dict[str, Any], base: dict[str, Any]
) -> tuple[float, float]:
    """Mean per-query NDCG@10 difference of ``run`` over ``base``, and its two-sided p-value from a
    paired randomization test (10,000 sign flips, seeded)."""
    import numpy as np
    import ranx

    def per_query(r: dict[str, Any]) -> dict[str, float]:
        run_ = ranx.Run(r)
        ranx.evaluate(ranx.Qrels({q: qrels[q] for q in r}), run_, "ndcg@10", make_comparable=True)
        return {q: float(v) for q, v in run_.scores["ndcg@10"].items()}

    ours, theirs = per_query(run), per_query(base)
    d = np.array([ours[q] - theirs[q] for q in sorted(ours)])
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(10_000, len(d)))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(d.mean()), float((np.sum(flipped >= abs(d.mean()) - 1e-12) + 1) / (len(flipped) + 1))


def epoch_snapshots(root: Any) -> Any:
    """A trainer callback saving the model at the end of every epoch under ``root/epoch-N``."""
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):  # type: ignore[misc]
        def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            n = round(state.epoch or 0)
            for stale in (root / f"epoch-{n}").glob("dev-k*.json"):  # metrics of older weights
                stale.unlink()
            model.save_pretrained(str(root / f"epoch-{n}"))
            log.info("saved the epoch-%d snapshot (step %d)", n, state.global_step)

    return Snapshot()


def pick_epoch(
    snapshots: list[Any], dev_ids: list[str], depth: int, arch: str = "cross-encoder"
) -> tuple[Any, dict[str, float]]:
    """Score every epoch snapshot on the dev queries; the best by NDCG@10 (earliest on ties)."""
    import json

    from rerankers_plugins.eval.harness import evaluate

    dev = dev_data(dev_ids)
    scores: dict[str, float] = {}
    for snap in snapshots:
        done = snap / f"dev-k{depth}.json"  # the dev metrics of this snapshot at this depth
        if not done.is_file():
            report = evaluate(dev, {"m": load_scorer(arch, snap)}, k=depth, metrics=("ndcg@10", "mrr@10"))
            done.write_text(json.dumps(next(r.metrics for r in report.results if r.name == "m")))
        metrics = json.loads(done.read_text())
        scores[snap.name] = metrics["ndcg@10"]
        print(f"dev {snap.name}: NDCG@10 {metrics['ndcg@10']:.4f}, MRR@10 {metrics['mrr@10']:.4f}")
    best = max(snapshots, key=lambda s: (scores[s.name], -snapshots.index(s)))
    return best, scores


@functools.cache
def _train_split() -> Any:
    from rerankers_plugins.eval.beir import load_beir

    return load_beir(_common.DATA, "train")


def dev_data(dev_ids: list[str]) -> Any:
    """The dev queries carved from train (never trained on), over the whole corpus (read once)."""
    from rerankers_plugins.eval.beir import BeirData

    train = _train_split()
    return BeirData(
        corpus=train.corpus,
        queries={q: train.queries[q] for q in dev_ids},
        qrels={q: dict(train.qrels[q]) for q in dev_ids},
    )


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
    parser.add_argument("--depth", type=int, default=30, help="negatives drawn from the first stage's top N")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--dev-depth", type=int, default=30)
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all 300)")
    parser.add_argument("--latency-queries", type=int, default=10)
    parser.add_argument(
        "--weights-on-dev",
        action="store_true",
        help="add a fusion row whose (CE, MaxSim, BM25) weights are chosen on the dev queries (BM25 top 100)",
    )
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
    if args.depth != 30:
        tag += f"-depth{args.depth}"
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
            depth=args.depth,
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
    if args.teacher:  # the student next to its teacher, on the same dev queries and depth
        from rerankers_plugins.eval.harness import evaluate
        from rerankers_plugins.train import as_pipeline

        teacher = evaluate(
            dev_data(info["dev_query_ids"]),
            {"teacher": as_pipeline(args.teacher)},
            k=args.dev_depth,
            metrics=("ndcg@10", "mrr@10"),
        )
        t = next(r.metrics for r in teacher.results if r.name == "teacher")
        print(f"dev teacher {args.teacher}: NDCG@10 {t['ndcg@10']:.4f}, MRR@10 {t['mrr@10']:.4f}")
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
        cached = CachedScorer(ce, path=scores_db)
        weights = None
        if args.weights_on_dev:
            weights = weights_on_dev(cached, maxsim, info["dev_query_ids"], k=100)
            print(f"fusion weights chosen on dev: {weights}")
        pipelines = build(cached, maxsim, weights)
        uncached = build(ce, maxsim, weights)
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
    # each row against the best pipeline without the trained model, query by query
    base = next((r.run for r in report.results if r.name == BAR), None)
    qrels = {q: dict(test.qrels[q]) for q in test.queries}
    print("| pipeline | NDCG@10 | MRR@10 | median ms/query (CPU) | NDCG@10 vs the bar (paired p) |")
    print("|---|---:|---:|---:|---:|")
    for r in report.results:
        ms = latency.get(r.name)
        vs = "-"
        if base is not None and r.name != BAR:
            diff, p = paired_test(qrels, r.run, base)
            vs = f"{diff:+.3f} (p={p:.2f})"
        print(
            f"| {r.name} | {r.metrics['ndcg@10']:.3f} | {r.metrics['mrr@10']:.3f} | "
            f"{f'{ms:.0f}' if ms else '-'} | {vs} |"
        )


if __name__ == "__main__":
    main()
