"""``rerankers-plugins batch``: rerank a large input with one pipeline, on the local engine or on Ray,
writing every row exactly once (see :func:`rerankers_plugins.batch.rerank_dataset`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rerankers_plugins.registry import available

__all__ = ["add_parser", "batch_command"]


def batch_command(args: argparse.Namespace) -> int:
    from rerankers_plugins.batch import rerank_dataset
    from rerankers_plugins.batch.store import default_format

    pipeline = args.pipeline
    if args.config:
        pipeline = f"{args.config}#{args.name}" if args.name else args.config
    if pipeline is None:
        print(
            "error: give --pipeline KIND[:key=value,...] or --config FILE.toml [--name NAME]", file=sys.stderr
        )
        return 2
    summary = rerank_dataset(
        pipeline,
        args.input,
        args.output,
        beir=args.beir,
        engine=args.engine,
        top_n=args.top_n,
        threshold=args.threshold,
        shard_queries=args.shard_queries,
        block_queries=args.block_queries,
        retries=args.retries,
        max_errors=args.max_errors,
        overwrite=args.overwrite,
        output_format=args.format,
        progress=not args.no_progress,
        actors=args.actors,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        address=args.address,
    )
    print(summary)
    print(
        f"written to {args.output}: run.trec, rows/ ({args.format or default_format()}), errors.jsonl, summary.json"
    )
    return 0


def add_parser(sub: Any) -> None:
    """The ``batch`` subcommand."""
    b = sub.add_parser(
        "batch",
        help="rerank many queries' candidates with one pipeline (parquet / JSON Lines / TREC run in; TREC "
        "run and parquet rows out), exactly once and resumable, locally or on Ray",
    )
    b.add_argument(
        "--pipeline",
        metavar="KIND[:k=v,...]|FILE.toml#NAME",
        help="the pipeline: a registry scorer (KIND one of " + ", ".join(sorted(available())) + ") or a "
        "pipeline file's pipeline",
    )
    b.add_argument("--config", metavar="FILE.toml", help="a pipeline file (tune writes one)")
    b.add_argument("--name", help="the pipeline of --config to run (default: its pipeline = ... key)")
    b.add_argument(
        "--input",
        required=True,
        help="rows of query_id, query, doc_id, text[, retrieval_score]: .parquet (or a folder), .jsonl, "
        "or a TREC run with --beir",
    )
    b.add_argument("--beir", metavar="DIR", help="with a TREC run as --input: the BEIR directory of its ids")
    b.add_argument(
        "--output", required=True, metavar="DIR", help="output directory (resumed when it holds this job)"
    )
    b.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="where shards run (default local)"
    )
    b.add_argument(
        "--top-n", type=int, default=None, help="rows per query in run.trec (all rows stay in rows/)"
    )
    b.add_argument("--threshold", type=float, default=None, help="score threshold for run.trec")
    b.add_argument("--shard-queries", type=int, default=64, help="queries per shard (default 64)")
    b.add_argument("--block-queries", type=int, default=16, help="queries reranked together (default 16)")
    b.add_argument("--retries", type=int, default=2, help="tries again of a failing block (default 2)")
    b.add_argument("--max-errors", type=int, default=None, help="stop once more rows than this are left out")
    b.add_argument("--overwrite", action="store_true", help="delete another job's output in --output first")
    b.add_argument(
        "--format", choices=("parquet", "jsonl"), default=None, help="rows files (default parquet)"
    )
    b.add_argument("--actors", type=int, default=None, help="ray: workers (default: CPUs / --num-cpus)")
    b.add_argument("--num-cpus", type=float, default=None, help="ray: CPUs per worker (default 1)")
    b.add_argument("--num-gpus", type=float, default=0, help="ray: GPUs per worker (default 0)")
    b.add_argument("--address", help="ray: join this cluster (e.g. auto, ray://head:10001)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=batch_command)
