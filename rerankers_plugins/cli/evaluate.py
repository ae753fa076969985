"""``rerankers-plugins eval`` (the pipelines you wrote, compared on a BEIR directory) and
``rerankers-plugins tune`` (the pipeline for your latency budget, chosen on dev queries and proved on
test queries)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.data import demo_data_dir
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.registry import STRATEGIES, available

__all__ = ["add_parsers", "eval_command", "tune_command"]


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


def add_parsers(sub: Any) -> None:
    """The ``eval`` and ``tune`` subcommands."""
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
