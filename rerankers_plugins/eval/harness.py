"""Which reranking pipeline is worth its latency on my data: the evaluation harness.

    from rerankers_plugins.eval.harness import evaluate
    report = evaluate("data/scifact", {"maxsim": ColBERTScorer(...), "hybrid": Hybrid(...)})
    print(report.table())
    report.write_runs("runs/")          # TREC run files
    report.plot("quality_latency.png")  # NDCG@10 against median latency

A first stage (BM25 over the corpus by default, or a TREC run, or a retriever) gives ``k``
candidates per query; every pipeline reranks the same candidates; metrics are ranx's definitions
(:mod:`rerankers_plugins.eval.metrics`, ranx itself for any other metric name); latency is per
query, the pipeline's rerank call only.
Backends that precompute document vectors (ColBERT) encode the candidate pool first; that time is
reported apart (``index s``), so no pipeline is charged for another's warm cache.
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval import metrics as metrics_here
from rerankers_plugins.eval.beir import BeirData, load_beir
from rerankers_plugins.eval.first_stage import FirstStageLike, first_stage_candidates
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy, leaf_nodes
from rerankers_plugins.pipeline.rerank import rerank
from rerankers_plugins.scorers.base import Indexable
from rerankers_plugins.types import Candidate

__all__ = ["EvalReport", "PipelineResult", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    name: str
    metrics: dict[str, float]
    latencies_ms: list[float]
    run: dict[str, dict[str, float]] = field(repr=False)
    #: seconds spent encoding documents before timing (backends with ``index``), not in the latencies
    index_s: float = 0.0

    @property
    def depth(self) -> int:
        """The most documents this pipeline returned for a query (a cascade keeping 10: 10)."""
        return max((len(docs) for docs in self.run.values()), default=0)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0

    @property
    def p95_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class EvalReport:
    dataset: str
    queries: int
    k: int
    results: list[PipelineResult]
    first_stage: str = "BM25"

    @property
    def metric_names(self) -> list[str]:
        return list(self.results[0].metrics) if self.results else []

    def table(self) -> str:
        """A markdown table: one row per pipeline, metrics, then the time spent indexing documents
        (once, before timing) and median / p95 rerank latency per query. A recall over a pipeline
        that returns fewer than k documents is labelled with the depth it really has."""
        names = self.metric_names
        head = "| pipeline | " + " | ".join(n.upper() for n in names)
        lines = [
            head + " | index s | median ms | p95 ms |",
            "|---|" + "---:|" * (len(names) + 3),
        ]
        for r in self.results:
            cells = []
            for n in names:
                cell = f"{r.metrics[n]:.3f}"
                if n.startswith("recall@") and 0 < r.depth < int(n.split("@")[1]):
                    cell += f" (at {r.depth})"
                cells.append(cell)
            lat = f"{r.median_ms:.1f} | {r.p95_ms:.1f}" if r.latencies_ms else "- | -"
            index = f"{r.index_s:.1f}" if r.index_s else "-"
            lines.append(f"| {r.name} | {' | '.join(cells)} | {index} | {lat} |")
        return "\n".join(lines)

    def write_runs(self, directory: str | Path) -> list[Path]:
        """One TREC run file per pipeline (``qid Q0 docid rank score name``)."""
        out_dir = Path(directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for r in self.results:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r.name)
            path = out_dir / f"{safe}.trec"
            with path.open("w", encoding="utf-8") as f:
                for qid, docs in r.run.items():
                    for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), start=1):
                        f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {safe}\n")
            paths.append(path)
        return paths

    def plot(self, path: str | Path, metric: str = "ndcg@10") -> Path:
        """Quality against median latency, one labelled point per pipeline (PNG)."""
        matplotlib = require("matplotlib", "eval")
        matplotlib.use("Agg")
        plt = require("matplotlib.pyplot", "eval")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, r in enumerate(self.results):
            x = max(r.median_ms, 0.1)
            ax.scatter([x], [r.metrics[metric]], s=40)
            # alternate label sides so that neighbouring points stay readable
            offset = (6, 5) if i % 2 == 0 else (6, -12)
            ax.annotate(r.name, (x, r.metrics[metric]), textcoords="offset points", xytext=offset, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("median rerank latency per query (ms, log scale; first stage only at 0.1)")
        ax.set_ylabel(metric.upper())
        ax.set_ylim(0, 1)  # from 0: small gains look as small as they are
        ax.set_title(f"{self.dataset}: {self.queries} queries, {self.first_stage} top-{self.k}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def progress_bar(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    """``iterable`` with a progress bar on stderr (tqdm) when ``enabled``; without tqdm, one log line."""
    if not enabled:
        return iterable
    if importlib.util.find_spec("tqdm") is None:  # documented fallback: a log line instead of a bar
        logger.info("%s: %d queries", desc, total)
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def index_pool(label: str, scorer: ScorerLike, pool: Sequence[Candidate]) -> float:
    """Encode the candidate pool once, before timing, for backends that precompute document vectors
    (an ``index(texts)`` method, e.g. ColBERT), each as it will read them (its document template
    filled in); returns the seconds spent (0.0: nothing to index)."""
    spent = 0.0
    done: list[tuple[object, object]] = []
    for leaf in leaf_nodes(as_strategy(scorer)):
        backend = leaf.leaf
        if isinstance(backend, Indexable) and not any(b is backend and t == leaf.template for b, t in done):
            done.append((backend, leaf.template))
            texts = (
                [c.text for c in pool] if leaf.template is None else [leaf.template.render(c) for c in pool]
            )
            t0 = time.perf_counter()
            backend.index(texts)
            spent += time.perf_counter() - t0
            where = backend.cache.directory
            logger.info(
                "%s: %d documents indexed in %.1f s (vectors cached in %s)",
                label,
                len(texts),
                spent,
                where or "memory",
            )
    return spent


def _rerank_all(
    label: str,
    scorer: ScorerLike,
    dataset: BeirData,
    qids: Sequence[str],
    first: Mapping[str, list[Candidate]],
    progress: bool,
) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Every query's first-stage candidates reranked by ``scorer``: the run (ranks as scores, so
    ties cannot reorder) and each call's latency in ms."""
    run: dict[str, dict[str, float]] = {}
    lat: list[float] = []
    for q in progress_bar(qids, len(qids), label, progress):
        t0 = time.perf_counter()
        ranked = rerank(dataset.queries[q], first[q], scorer)
        lat.append((time.perf_counter() - t0) * 1000)
        run[q] = {str(s.id): float(len(ranked) - s.rank) for s in ranked}
    return run, lat


def evaluate(
    data: str | Path | BeirData,
    pipelines: Mapping[str, ScorerLike],
    *,
    split: str = "test",
    k: int = 100,
    queries: int | None = None,
    metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@100"),
    progress: bool = True,
    first_stage: FirstStageLike = None,
    query_ids: Sequence[str] | None = None,
) -> EvalReport:
    """Evaluate each pipeline (a scorer or strategy) on the first stage's top-``k`` of a BEIR dataset.

    ``first_stage``: None (BM25 over the corpus), a TREC run file, or a retriever
    (:func:`~rerankers_plugins.eval.first_stage.first_stage_candidates`). The first row is the first
    stage itself (with no pipelines, the report is that run's evaluation). ``query_ids`` keeps only
    those judged queries (a tune's ``test_queries.txt``); ``queries`` then limits the run to the
    first N query ids (sorted). Recall@k is always reported.
    """
    k = as_int(k, "k", minimum=1) or 1
    dataset = data if isinstance(data, BeirData) else load_beir(data, split)
    name = Path(str(data)).name if not isinstance(data, BeirData) else "dataset"
    qids = _query_ids(dataset, split, queries, query_ids)
    fs = first_stage_candidates(
        first_stage, dataset.corpus, dataset.queries, qids, k, known_queries=dataset.query_ids or None
    )
    first = {q: list(fs.candidates[q]) for q in qids}
    judged = {q: dict(dataset.qrels[q]) for q in qids}
    wanted_metrics = list(dict.fromkeys([*metrics, f"recall@{k}"]))

    def score(run: dict[str, dict[str, float]], label: str) -> dict[str, float]:
        return _metrics(judged, run, wanted_metrics, label)

    first_run = {q: _first_stage_scores(first[q]) for q in qids}
    results = [PipelineResult(fs.name, score(first_run, fs.name), [], first_run)]
    pool = list({c.id: c for q in qids for c in first[q]}.values())
    for label, scorer in pipelines.items():
        index_s = index_pool(label, scorer, pool)
        run, lat = _rerank_all(label, scorer, dataset, qids, first, progress)
        results.append(PipelineResult(label, score(run, label), lat, run, index_s))
        logger.info("%s: %s, median %.1f ms", label, results[-1].metrics, results[-1].median_ms)
    return EvalReport(name, len(qids), k, results, fs.name)


def _query_ids(
    dataset: BeirData, split: str, queries: int | None, query_ids: Sequence[str] | None
) -> list[str]:
    """The judged queries evaluated: ``query_ids`` (each must be judged) or all, sorted, the first
    ``queries`` of them."""
    qids = sorted(dataset.queries)
    if query_ids is not None:
        unknown = [q for q in query_ids if q not in dataset.queries]
        if unknown:
            raise ConfigError(f"query ids not judged in split {split!r}: {unknown[:5]}")
        wanted = set(query_ids)
        qids = [q for q in qids if q in wanted]
    qids = qids[:queries]
    if not qids:
        raise ConfigError("no queries with judgments in this split")
    return qids


def _metrics(
    judged: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    names: Sequence[str],
    label: str,
) -> dict[str, float]:
    """The mean of each metric: computed here where it can be (ranx's definitions, without
    compiling its kernels), else by ranx."""
    if metrics_here.supported(names):
        return metrics_here.evaluate(judged, run, names)
    ranx = require("ranx", "eval")
    values = ranx.evaluate(
        ranx.Qrels({q: dict(j) for q, j in judged.items()}),
        ranx.Run({q: dict(r) for q, r in run.items()}, name=label),
        list(names),
        make_comparable=True,
    )
    return {m: float(values[m]) for m in names}


def _first_stage_scores(candidates: Sequence[Candidate]) -> dict[str, float]:
    """The first stage's run: its retrieval scores where every candidate has one, else its order
    as scores (so ties and missing scores cannot reorder it)."""
    if candidates and all(c.retrieval_score is not None for c in candidates):
        return {str(c.id): float(c.retrieval_score or 0.0) for c in candidates}
    return {str(c.id): float(len(candidates) - i) for i, c in enumerate(candidates)}
