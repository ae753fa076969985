"""Fine-tune a reranker (a cross-encoder or a poly-encoder) on BEIR-format data.

Flow: check the settings (:class:`~rerankers_plugins.train.settings.TrainSettings`) and the base
model, choose the queries (:mod:`~rerankers_plugins.train.data`: qrels checked, a dev split carved
or read, unlabeled queries with every judged one left out), check the output directory
(:mod:`~rerankers_plugins.train.run_dir`: an interrupted run resumes from its last checkpoint), write
the training rows to a JSON-lines file (:mod:`~rerankers_plugins.train.rows`: mined negatives or
distilled groups, streamed, so memory stays bounded for any corpus), train with the architecture's
trainer (:mod:`~rerankers_plugins.train.arch`; checkpoints every ``save_steps``), save the model
where its scorer loads it, score the dev queries with the evaluation harness, and write a model
card (:mod:`~rerankers_plugins.train.result`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.beir import BeirData
from rerankers_plugins.scorers._device import cpu_has_fast_bf16, resolve_device
from rerankers_plugins.scorers._hf import load_model, resolve_model
from rerankers_plugins.train.arch import ARCHITECTURES, Arch
from rerankers_plugins.train.data import (
    Queries,
    check_qrels,
    dev_ids,
    extra_queries,
    load_split,
    training_queries,
)
from rerankers_plugins.train.result import TrainResult, model_card, verdict
from rerankers_plugins.train.rows import write_rows
from rerankers_plugins.train.run_dir import RunDir
from rerankers_plugins.train.settings import ARCHS, LOSSES, TEACHER_DEPTH, PipelineSpec, TrainSettings

__all__ = ["ARCHS", "LOSSES", "TEACHER_DEPTH", "TrainResult", "fine_tune", "fine_tune_with"]

logger = logging.getLogger(__name__)

_NOT_ENCODERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")


def transformers_major() -> int:
    return int(str(require("transformers", "cross-encoder").__version__).split(".")[0])


def _is_decoder(config: Any, architectures: Sequence[str]) -> bool:
    return bool(
        getattr(config, "is_encoder_decoder", False)
        or getattr(config, "is_decoder", False)
        or any(a.endswith(_NOT_ENCODERS) for a in architectures)
    )


def _check_base(base: str, max_length: int) -> tuple[str, int, bool]:
    """The base's directory or id, after checking it is an encoder (or a one-label cross-encoder),
    ``max_length`` capped at the model's position limit (logged when it is), and whether the base
    already is a cross-encoder."""
    transformers = require("transformers", "cross-encoder")
    path = resolve_model(base)
    config = load_model("transformers", path, lambda: transformers.AutoConfig.from_pretrained(path))
    architectures = list(getattr(config, "architectures", None) or [])
    if _is_decoder(config, architectures):
        raise ConfigError(
            f"base {base!r} is not an encoder (architectures: {', '.join(architectures) or config.model_type}): "
            "a cross-encoder is trained from a BERT-like encoder (e.g. the packaged 'minilm') or from an "
            "existing cross-encoder"
        )
    is_cross_encoder = any(a.endswith("ForSequenceClassification") for a in architectures)
    if is_cross_encoder and config.num_labels != 1:
        raise ConfigError(
            f"base {base!r} is a cross-encoder with {config.num_labels} output labels; training here "
            "continues one-label cross-encoders (or starts from an encoder)"
        )
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and max_length > limit:
        logger.warning(
            "max_length %d is past %r's %d positions: training with %d", max_length, base, limit, limit
        )
        max_length = limit
    return path, max_length, is_cross_encoder


def _bf16(device: str) -> bool:
    torch = require("torch", "cross-encoder")
    return (device == "cpu" and cpu_has_fast_bf16()) or (
        device.startswith("cuda") and bool(torch.cuda.is_bf16_supported())
    )


def _training_arguments(arch: Arch, settings: TrainSettings, run: RunDir, device: str, bf16: bool) -> Any:
    loss, per_query, batch_size = settings.loss, settings.per_query, settings.batch_size
    # transformers 5 takes the warm-up ratio as a float warmup_steps; 4.x as warmup_ratio
    warmup: dict[str, Any] = (
        {"warmup_steps": float(settings.warmup_ratio)}
        if transformers_major() >= 5
        else {"warmup_ratio": settings.warmup_ratio}
    )
    return arch.training_arguments(
        output_dir=str(run.work / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        per_device_train_batch_size=batch_size if loss == "bce" else max(1, batch_size // (per_query + 1)),
        learning_rate=settings.learning_rate,
        **warmup,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=bf16,
        use_cpu=device == "cpu",
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=0.05,  # a ratio of the total steps: about 20 loss readings per run
        report_to="none",
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
    )


def _dev_metrics(data: BeirData, queries: Queries, arch: Arch, settings: TrainSettings) -> dict[str, float]:
    """NDCG@10 and MRR@10 of the saved model (and of BM25) reranking the dev queries' BM25 top
    ``dev_depth``; empty when no dev query has a positive."""
    held_out = dev_ids(queries)
    if not held_out:
        return {}
    from rerankers_plugins.eval.harness import evaluate

    dev_data = BeirData(
        corpus=data.corpus,
        queries={q: queries.dev_queries[q] for q in held_out},
        qrels={q: dict(queries.dev_qrels[q]) for q in held_out},
    )
    report = evaluate(
        dev_data,
        {"fine-tuned": arch.scorer(Path(settings.out))},
        k=settings.dev_depth,
        metrics=("ndcg@10", "mrr@10"),
        progress=settings.progress,
    )
    return {
        f"{'bm25' if r.name == 'BM25' else 'model'}_{m}": round(v, 4)
        for r in report.results
        for m, v in r.metrics.items()
    }


def fine_tune(
    data_dir: str | os.PathLike[str],
    base: str,
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    negatives: PipelineSpec = "bm25",
    negatives_model: str = "minilm",
    per_query: int = 8,
    depth: int = 30,
    epochs: float = 1.0,
    max_steps: int | None = None,
    max_length: int = 256,
    loss: str = "bce",
    teacher: PipelineSpec | None = None,
    dev_split: str | None = None,
    dev_fraction: float = 0.1,
    dev_depth: int = 100,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    save_steps: int = 200,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    arch: str = "cross-encoder",
    codes: int | None = 16,
    unlabeled: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Fine-tune a one-label cross-encoder (or, with ``arch="poly-encoder"``, a poly-encoder with
    ``codes`` document codes) from ``base`` on ``data_dir``'s ``split`` into ``out``.

    ``negatives``: ``"bm25"``, ``"bi-encoder"`` (``negatives_model`` over the whole corpus), a
    pipeline spec ``KIND[:key=value,...]`` or a scorer / strategy (reranking BM25's top 100).
    ``per_query`` negatives are drawn from each query's top ``depth`` non-positive candidates.
    ``loss``: ``"bce"`` (binary cross-entropy on positives and negatives, positives weighted by
    ``per_query``), ``"listwise"`` (ListNet over each query's positives and negatives, graded
    labels), or ``"margin-mse"`` (distillation: ``teacher``, a pipeline like ``negatives``, scores
    each query's first-stage top ``max(depth, 100)``; the student learns the teacher's per-query
    z-score margins).
    ``unlabeled``: with ``"margin-mse"``, a ``queries.jsonl``-style file of queries without
    judgments to distil on as well (any query a qrels file of ``data_dir`` judges is left out).
    The dev queries (``qrels/<dev_split>.tsv``, or ``dev_fraction`` of the training queries, seeded)
    are never trained on; the run ends by reranking their BM25 top ``dev_depth`` with the new model.
    ``out`` must be new or empty; a finished run there is refused unless ``overwrite``; an
    interrupted run there with the same settings is resumed from its last checkpoint.

    A cross-encoder trains with sentence-transformers' ``CrossEncoderTrainer`` and losses; a
    poly-encoder (:mod:`rerankers_plugins.scorers.poly_encoder`) with transformers' ``Trainer`` on
    the same rows and the same losses computed on its scores (:mod:`rerankers_plugins.train.arch`).
    The arguments are the fields of :class:`~rerankers_plugins.train.settings.TrainSettings`
    (:func:`fine_tune_with` takes one).
    """
    return fine_tune_with(TrainSettings(**locals()))


def fine_tune_with(settings: TrainSettings) -> TrainResult:
    """:func:`fine_tune` with its arguments as one :class:`TrainSettings`."""
    require("sentence_transformers", "cross-encoder")
    require("datasets", "train")
    torch = require("torch", "cross-encoder")
    arch = ARCHITECTURES[settings.arch]
    root = Path(settings.data_dir)
    t0 = time.perf_counter()
    data = load_split(root, settings.split)
    check_qrels(data, root, settings.split)
    base_path, max_length, base_is_cross_encoder = _check_base(settings.base, settings.max_length)
    settings = replace(settings, max_length=max_length)
    extra, digest = extra_queries(settings, root)
    run = RunDir.open(
        settings.out, {**settings.identity(), "unlabeled_digest": digest}, overwrite=settings.overwrite
    )
    queries = training_queries(data, root, settings)
    run.start()
    rows_file, n_rows = run.rows(settings.loss, lambda f: write_rows(f, data, queries.train, settings, extra))
    train_ds = require("datasets", "train").load_dataset(
        "json", data_files=str(rows_file), split="train", cache_dir=str(run.work / "hf-datasets")
    )

    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    bf16 = _bf16(device)
    args = _training_arguments(arch, settings, run, device, bf16)
    model = arch.build(settings, base_path, fresh_head=not base_is_cross_encoder, device=device)
    trainer = arch.trainer(model, args, train_ds, settings)
    if run.resume:
        logger.warning("resuming the interrupted run in %s from %s", run.path, Path(run.resume).name)
    trainer.train(resume_from_checkpoint=run.resume)
    history = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    arch.save(model, run.path)
    train_seconds = time.perf_counter() - t0

    dev_metrics = _dev_metrics(data, queries, arch, settings)
    first_loss = history[0] if history else None
    last_loss = history[-1] if history else None
    warnings = verdict(dev_metrics, first_loss, last_loss)
    for message in warnings:
        logger.warning("%s: %s", run.path, message)
    result = TrainResult(
        output_dir=str(run.path),
        base=settings.base,
        loss=settings.loss,
        steps=int(trainer.state.global_step),
        seconds=round(train_seconds, 1),
        train_queries=len(queries.train),
        dev_queries=len(dev_ids(queries)),
        skipped_queries=queries.skipped,
        training_rows=n_rows,
        first_loss=first_loss,
        last_loss=last_loss,
        dev_metrics=dev_metrics,
        resumed_from=Path(run.resume).name if run.resume else None,
        dev_query_ids=tuple(dev_ids(queries)),
        unlabeled_queries=len(extra),
        warnings=warnings,
        settings={
            **run.identity,
            "teacher_depth": settings.teacher_depth,
            "bf16": bf16,
            "dev": settings.dev_split
            or f"{settings.dev_fraction:.0%} of {settings.split} (seed {settings.seed})",
        },
    )
    (run.path / "README.md").write_text(model_card(arch, run.path, result, history), encoding="utf-8")
    run.finish({**asdict(result), "loss_history": list(history)})
    return result
