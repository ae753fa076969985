"""``rerankers-plugins train``: fine-tune a reranker on a BEIR directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.data import demo_data_dir

__all__ = ["add_parser", "train_command"]


def _settings_fields() -> list[Any]:
    """The settings the command sets: every field of TrainSettings but the positional directory and
    those that are Python objects."""
    from rerankers_plugins.train.settings import TrainSettings

    return [
        f for f in dataclasses.fields(TrainSettings) if f.name != "data_dir" and f.metadata.get("cli", True)
    ]


def train_command(args: argparse.Namespace) -> int:
    require("datasets", "train")
    from rerankers_plugins.train import TrainSettings, fine_tune_with

    if args.demo == bool(args.data_dir):
        print("error: give a BEIR directory or --demo (one of them)", file=sys.stderr)
        return 2
    options = {f.name: getattr(args, f.name) for f in _settings_fields()}
    result = fine_tune_with(TrainSettings(demo_data_dir() if args.demo else args.data_dir, **options))
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


def _kind(annotation: Any) -> type:
    """What the command line reads a setting as, from its annotation (a string: the settings module
    postpones annotations): bool, int or float (optional or not), else str."""
    text = str(annotation).removesuffix(" | None")
    return {"bool": bool, "int": int, "float": float}.get(text, str)


def _add_setting(parser: argparse.ArgumentParser, f: Any, kind: type) -> None:
    """One option for the TrainSettings field ``f`` (of type ``kind``): its flag, type, default,
    choices and help from the field itself."""
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    required = f.default is dataclasses.MISSING
    shown = "" if required or f.default is None else f" (default {f.default})"
    if kind is bool:  # a default of True is turned off with --no-NAME
        if f.default:
            parser.add_argument(
                f"--no-{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_false",
                help=f"no {meta['help']}",
            )
        else:
            parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
        return
    parser.add_argument(
        flag,
        *meta.get("aliases", ()),
        dest=f.name,
        type=kind,
        required=required,
        default=None if required else f.default,
        choices=meta.get("choices"),
        metavar=meta.get("metavar"),
        help=meta["help"] + shown,
    )


def add_parser(sub: Any) -> None:
    """The ``train`` subcommand: an option per field of TrainSettings (its help text, type and
    default), so that every setting of ``fine_tune`` can be set from the command line."""
    from rerankers_plugins.train.settings import TrainSettings

    t = sub.add_parser(
        "train",
        help="fine-tune a cross-encoder on a BEIR-format directory (qrels/<split>.tsv, hard negatives)",
    )
    t.add_argument("data_dir", nargs="?", help=dataclasses.fields(TrainSettings)[0].metadata["help"])
    t.add_argument(
        "--demo",
        action="store_true",
        help="train on the small collection shipped with the package (its train split: 20 queries)",
    )
    for f in _settings_fields():
        _add_setting(t, f, _kind(f.type))
    t.set_defaults(func=train_command)
