"""What a fine-tuning run returns (:class:`TrainResult`), the warnings it gives when training did
not learn, and the model card it writes next to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins.train.arch import Arch

__all__ = ["TrainResult", "model_card", "verdict"]


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the model directory, steps, time, losses and dev metrics."""

    output_dir: str
    base: str
    loss: str
    steps: int
    seconds: float
    train_queries: int
    dev_queries: int
    skipped_queries: int
    training_rows: int
    first_loss: float | None
    last_loss: float | None
    dev_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    dev_query_ids: tuple[str, ...] = ()
    unlabeled_queries: int = 0
    #: what the run's own numbers say is wrong (the model below its first stage on dev, a rising
    #: loss); also logged as warnings and written into the model card
    warnings: tuple[str, ...] = ()


def verdict(dev_metrics: Mapping[str, float], first: float | None, last: float | None) -> tuple[str, ...]:
    """Warnings a run's own figures call for.

    >>> verdict({"model_ndcg@10": 0.43, "bm25_ndcg@10": 1.0}, 1.2, 1.5)[0][:52]
    'the fine-tuned model is below its first stage on dev'
    >>> verdict({"model_ndcg@10": 0.8, "bm25_ndcg@10": 0.7}, 1.2, 0.3)
    ()
    """
    out = []
    model, bm25 = dev_metrics.get("model_ndcg@10"), dev_metrics.get("bm25_ndcg@10")
    if model is not None and bm25 is not None and model < bm25:
        out.append(
            f"the fine-tuned model is below its first stage on dev: NDCG@10 {model:.3f} against BM25's "
            f"{bm25:.3f}; reranking with it would make results worse. Train longer or on more queries, "
            "try another learning rate, or keep the first stage."
        )
    if first is not None and last is not None and last > first:
        out.append(f"the training loss rose ({first:.4g} -> {last:.4g}): the learning rate may be too high")
    return tuple(out)


def model_card(arch: Arch, out: Path, result: TrainResult, history: Sequence[float]) -> str:
    dev = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.dev_metrics.items()) or "| - | - |"
    if result.warnings:
        dev += "\n\n**Warning.** " + "\n\n**Warning.** ".join(result.warnings)
    settings = "\n".join(f"| {k} | {v} |" for k, v in result.settings.items())
    return (
        arch.card_head(out, result.settings)
        + f"""| | |
|---|---|
| base | {result.base} |
| loss | {result.loss} |
| steps | {result.steps} |
| training queries | {result.train_queries} ({result.skipped_queries} skipped: no positive judgment) |
| unlabeled queries given (judged ones left out) | {result.unlabeled_queries} |
| training rows | {result.training_rows} |
| first / last logged loss | {result.first_loss} / {result.last_loss} |
| time (mining + training) | {result.seconds} s |

## Settings

| setting | value |
|---|---|
{settings}

## Dev metrics (queries held out from training; BM25 top candidates reranked)

| metric | value |
|---|---:|
{dev}
"""
    )
