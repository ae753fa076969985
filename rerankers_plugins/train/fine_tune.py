"""Fine-tune a reranker (a cross-encoder or a poly-encoder) on BEIR-format data.

Flow: check the settings (:class:`~rerankers_plugins.train.settings.TrainSettings`), read the
split's qrels (checked: unknown documents, queries with no positive), carve a dev split from the
training queries (or read one), check the output directory (:mod:`~rerankers_plugins.train.run_dir`:
an interrupted run resumes from its last checkpoint), mine hard negatives with a first stage of the
package, write the training rows to a JSON-lines file (streamed, so memory stays bounded for any
corpus), train with the architecture's trainer (:mod:`~rerankers_plugins.train.arch`; checkpoints
every ``save_steps``), save the model where its scorer loads it, score the dev queries with the
evaluation harness, and write a model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.beir import BeirData, load_beir, read_qrels, read_queries
from rerankers_plugins.ops.fusion import zscore
from rerankers_plugins.scorers._hf import cpu_has_fast_bf16, load_model, resolve_device, resolve_model
from rerankers_plugins.train.arch import ARCHITECTURES, Arch
from rerankers_plugins.train.negatives import FirstStage, _rng, as_pipeline, first_stage, mine_negatives
from rerankers_plugins.train.run_dir import RunDir
from rerankers_plugins.train.settings import ARCHS, LOSSES, TEACHER_DEPTH, PipelineSpec, TrainSettings
from rerankers_plugins.types import Candidate

__all__ = ["ARCHS", "LOSSES", "TEACHER_DEPTH", "TrainResult", "fine_tune", "fine_tune_with"]

logger = logging.getLogger(__name__)

_NOT_ENCODERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")


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


def _verdict(dev_metrics: Mapping[str, float], first: float | None, last: float | None) -> tuple[str, ...]:
    """Warnings a run's own figures call for.

    >>> _verdict({"model_ndcg@10": 0.43, "bm25_ndcg@10": 1.0}, 1.2, 1.5)[0][:52]
    'the fine-tuned model is below its first stage on dev'
    >>> _verdict({"model_ndcg@10": 0.8, "bm25_ndcg@10": 0.7}, 1.2, 0.3)
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


def transformers_major() -> int:
    return int(str(require("transformers", "cross-encoder").__version__).split(".")[0])


def _splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "qrels").glob("*.tsv"))


def _load(root: Path, split: str) -> BeirData:
    if not (root / "qrels" / f"{split}.tsv").is_file():
        raise ConfigError(
            f"split {split!r} not found: {root / 'qrels' / f'{split}.tsv'} is missing "
            f"(splits here: {', '.join(_splits(root)) or 'none'})"
        )
    return load_beir(root, split)


def _check_qrels(data: BeirData, root: Path, split: str) -> None:
    known = {str(c.id) for c in data.corpus}
    unknown = sorted({d for judged in data.qrels.values() for d in judged if d not in known})
    if unknown:
        raise ConfigError(
            f"qrels/{split}.tsv names {len(unknown)} document(s) not in corpus.jsonl, e.g. "
            f"{', '.join(repr(u) for u in unknown[:5])}: fix the qrels or the corpus"
        )
    missing = sorted(set(data.qrels) - set(data.queries))
    if missing:
        raise ConfigError(
            f"qrels/{split}.tsv names {len(missing)} quer(ies) not in queries.jsonl, e.g. "
            f"{', '.join(repr(m) for m in missing[:5])}"
        )


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


def _normal(text: str) -> str:
    """A query's text for matching: case and runs of whitespace ignored."""
    return " ".join(text.casefold().split())


def _query_row(line: str) -> tuple[str, str]:
    row = json.loads(line)
    qid, text = row["_id"], row["text"]
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise TypeError(f"'_id' must be a string or an int, got {qid!r}")
    if not isinstance(text, str) or not text.strip():
        raise TypeError(f"'text' must be a non-empty string, got {text!r}")
    return str(qid), text


def _read_unlabeled(path: Path) -> dict[str, str]:
    """The query rows of ``path``, each id and each text (case and spacing ignored) once."""
    if not path.is_file():
        raise ConfigError(f"unlabeled queries file {path} not found")
    queries: dict[str, str] = {}
    seen: set[str] = set()
    repeated = n = 0
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):  # noqa: B007 (n names the line in the error)
                if not line.strip():
                    continue
                qid, text = _query_row(line)
                if qid in queries or _normal(text) in seen:
                    repeated += 1
                    continue
                queries[qid] = text
                seen.add(_normal(text))
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{path} line {n} is not a query row ({{'_id': ..., 'text': ...}}): {exc}") from exc
    if repeated:
        logger.warning("%s: %d repeated query ids or texts used once", path, repeated)
    return queries


def _judged(queries: Mapping[str, str], root: Path) -> tuple[set[str], set[str]]:
    """The ids of ``queries`` that a qrels file of ``root`` judges by id, and (the others) by text."""
    judged = {q for split in _splits(root) for q in read_qrels(root / "qrels" / f"{split}.tsv")}
    judged_texts = {
        _normal(str(text)) for qid, text in read_queries(root / "queries.jsonl").items() if qid in judged
    }
    by_id = {q for q in queries if q in judged}
    by_text = {q for q, text in queries.items() if q not in by_id and _normal(text) in judged_texts}
    return by_id, by_text


def _unlabeled(path: Path, root: Path) -> dict[str, str]:
    """Queries to distil on from a ``queries.jsonl``-style file (``_id``, ``text``), less every query
    that a qrels file of ``root`` judges, by id or by text (case and spacing ignored): those are for
    training or evaluation with their labels, and a test query must never be trained on, labelled
    or not. A repeated id or text is used once (warned); a row without text is refused."""
    queries = _read_unlabeled(path)
    by_id, by_text = _judged(queries, root)
    if by_id or by_text:
        left_out = sorted(by_id | by_text)
        logger.warning(
            "%d of %d unlabeled queries are judged in %s/qrels (%d by id, %d by text; e.g. %s): left "
            "out, so no evaluation query is trained on (give queries of another collection ids of "
            "their own, e.g. a prefix)",
            len(left_out),
            len(queries),
            root,
            len(by_id),
            len(by_text),
            ", ".join(repr(q) for q in left_out[:3]),
        )
    kept = {q: text for q, text in queries.items() if q not in by_id | by_text}
    if not kept:
        raise ConfigError(f"{path} has no unlabeled query left to distil on (rows: {len(queries)})")
    return kept


def _carve_dev(qids: Sequence[str], fraction: float, seed: int) -> set[str]:
    shuffled = sorted(qids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: round(len(shuffled) * fraction)])


def _rows(
    data: BeirData,
    qids: Sequence[str],
    *,
    loss: str,
    negatives: PipelineSpec,
    teacher: PipelineSpec | None,
    per_query: int,
    depth: int,
    seed: int,
    negatives_model: str,
    unlabeled: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Training rows in the column layout each sentence-transformers loss expects."""
    queries = {q: data.queries[q] for q in qids}
    stage = first_stage(negatives, data.corpus, model=negatives_model, depth=max(depth, 100))
    if loss == "margin-mse":
        if teacher is None:
            raise ConfigError("loss='margin-mse' distils from a teacher: pass teacher= (--teacher PIPELINE)")
        yield from _distilled(data, stage, queries, teacher, unlabeled or {}, per_query, depth, seed)
        return
    yield from _labelled(data, stage, queries, loss, per_query, depth, seed)


def _labelled(
    data: BeirData,
    stage: FirstStage,
    queries: Mapping[str, str],
    loss: str,
    per_query: int,
    depth: int,
    seed: int,
) -> Iterator[dict[str, Any]]:
    """BCE rows (one per positive and per mined negative) or listwise rows (one list per query,
    graded labels)."""
    texts = {str(c.id): c.text for c in data.corpus}
    for qid, negs in mine_negatives(queries, data.qrels, stage, per_query=per_query, depth=depth, seed=seed):
        positives = {d: float(g) for d, g in sorted(data.qrels[qid].items()) if g > 0}
        docs = [texts[d] for d in positives] + [c.text for c in negs]
        labels = [*positives.values()] + [0.0] * len(negs)
        if loss == "listwise":
            yield {"query": queries[qid], "docs": docs, "labels": labels}
            continue
        for doc, label in zip(docs, labels, strict=True):
            yield {"query": queries[qid], "document": doc, "label": 1.0 if label > 0 else 0.0}


def _distilled(
    data: BeirData,
    stage: FirstStage,
    labelled: Mapping[str, str],
    teacher: PipelineSpec,
    unlabeled: Mapping[str, str],
    per_query: int,
    depth: int,
    seed: int,
) -> Iterator[dict[str, Any]]:
    """Margin-MSE rows of the labelled queries, then of the unlabeled ones, in chunks of 64."""
    from rerankers_plugins.pipeline.leaves import as_strategy, require_scores
    from rerankers_plugins.pipeline.rerank import rerank

    judge = as_pipeline(teacher)
    require_scores(as_strategy(judge), "a distillation teacher")
    queries = {**labelled, **unlabeled}
    every = [*labelled, *sorted(unlabeled)]
    for start in range(0, len(every), 64):
        chunk = every[start : start + 64]
        # the teacher judges the list it would rerank in use (the first stage's top
        # TEACHER_DEPTH), so its per-query z-scores and a judged positive below the top
        # ``depth`` are both there; the negatives still come from the top ``depth``
        ranked = stage([queries[q] for q in chunk], max(depth, TEACHER_DEPTH))
        for qid, cands in zip(chunk, ranked, strict=True):
            scored = {str(s.candidate.id): s.score for s in rerank(queries[qid], cands, judge)}
            yield from _distill_rows(
                qid, queries[qid], cands, scored, data.qrels.get(qid, {}), per_query, depth, seed
            )


def _distill_group(
    qid: str,
    cands: Sequence[Candidate],
    scores: Mapping[str, float],
    judged: Mapping[str, int],
    per_query: int,
    depth: int,
    seed: int,
) -> list[str]:
    """The anchor's id, then the drawn negatives' (see :func:`_distill_rows`)."""
    order = sorted(dict.fromkeys(str(c.id) for c in cands if str(c.id) in scores), key=lambda d: -scores[d])
    positive = [d for d in order if judged.get(d, 0) > 0]
    anchor = (positive or order)[0]
    head = {str(c.id) for c in cands[:depth]} - {anchor} - set(positive)
    rest = [d for d in order if d in head]
    picked = sorted(_rng(seed, qid).sample(range(len(rest)), min(per_query, len(rest))))
    return [anchor] + [rest[i] for i in picked]


def _distill_rows(
    qid: str,
    query: str,
    cands: Sequence[Candidate],
    scores: Mapping[str, float],
    judged: Mapping[str, int],
    per_query: int,
    depth: int,
    seed: int,
) -> Iterator[dict[str, Any]]:
    """One margin-MSE row: (query, anchor, negatives...) with the teacher's per-query z-scores.

    ``cands`` is the first stage's list, best first, and ``scores`` the teacher's scores of it. The
    anchor is the judged positive the teacher likes best anywhere in that list, or the teacher's top
    document when there is none (an unlabeled query, or a positive the first stage missed); the
    negatives are drawn (seeded) from the first stage's top ``depth`` other documents that are not
    judged positive. The z-scores are taken over the whole list the teacher scored."""
    by_id = {str(c.id): c for c in cands if str(c.id) in scores}
    if len(by_id) < 2:
        return
    group = _distill_group(qid, cands, scores, judged, per_query, depth, seed)
    if len(group) < 2:
        return
    zmap = dict(zip(by_id, zscore([scores[d] for d in by_id]), strict=True))
    row: dict[str, Any] = {"query": query, "positive": by_id[group[0]].text}
    for i, d in enumerate(group[1:], 1):
        row[f"negative_{i}"] = by_id[d].text
    row["label"] = [zmap[d] for d in group]
    # every row must have the same columns: pad short groups by repeating the last negative
    for i in range(len(group), per_query + 1):
        row[f"negative_{i}"] = row[f"negative_{len(group) - 1}"]
        row["label"].append(row["label"][-1])
    yield row


@dataclass(frozen=True)
class _Queries:
    """Which queries a run trains on and which it holds out for dev."""

    train: list[str]
    skipped: int
    dev: set[str]
    dev_qrels: Mapping[str, Mapping[str, int]]
    dev_queries: Mapping[str, str]


def _queries(data: BeirData, root: Path, settings: TrainSettings) -> _Queries:
    labelled = sorted(q for q, judged in data.qrels.items() if any(g > 0 for g in judged.values()))
    skipped = len(data.qrels) - len(labelled)
    if skipped:
        logger.warning(
            "%d of %d queries in qrels/%s.tsv have no positive judgment: skipped",
            skipped,
            len(data.qrels),
            settings.split,
        )
    if settings.dev_split is not None:
        dev_data = _load(root, settings.dev_split)
        _check_qrels(dev_data, root, settings.dev_split)
        dev, dev_qrels, dev_queries = set(dev_data.qrels), dev_data.qrels, dev_data.queries
    else:
        dev = _carve_dev(labelled, settings.dev_fraction, settings.seed)
        dev_qrels, dev_queries = data.qrels, data.queries
    train = [q for q in labelled if q not in dev]
    if not train:
        raise ConfigError(
            f"no training queries left in {settings.split!r} (with a positive, outside the dev split)"
        )
    return _Queries(train, skipped, dev, dev_qrels, dev_queries)


def _write_rows(
    f: IO[str], data: BeirData, qids: Sequence[str], settings: TrainSettings, extra: Mapping[str, str]
) -> int:
    n = 0
    for row in _rows(
        data,
        qids,
        loss=settings.loss,
        negatives=settings.negatives,
        teacher=settings.teacher,
        per_query=settings.per_query,
        depth=settings.depth,
        seed=settings.seed,
        negatives_model=settings.negatives_model,
        unlabeled=extra,
    ):
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


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


def _dev_metrics(data: BeirData, queries: _Queries, arch: Arch, settings: TrainSettings) -> dict[str, float]:
    """NDCG@10 and MRR@10 of the saved model (and of BM25) reranking the dev queries' BM25 top
    ``dev_depth``; empty when no dev query has a positive."""
    dev_ids = _dev_ids(queries)
    if not dev_ids:
        return {}
    from rerankers_plugins.eval.harness import evaluate

    dev_data = BeirData(
        corpus=data.corpus,
        queries={q: queries.dev_queries[q] for q in dev_ids},
        qrels={q: dict(queries.dev_qrels[q]) for q in dev_ids},
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


def _dev_ids(queries: _Queries) -> list[str]:
    return sorted(q for q in queries.dev if any(g > 0 for g in queries.dev_qrels.get(q, {}).values()))


def _extra_queries(settings: TrainSettings, root: Path) -> tuple[dict[str, str], str | None]:
    """The unlabeled queries to distil on and their digest (part of the run identity: the file's
    contents, not only its path); none without ``settings.unlabeled``."""
    if settings.unlabeled is None:
        return {}, None
    extra = _unlabeled(Path(settings.unlabeled), root)
    return extra, hashlib.sha256(json.dumps(sorted(extra.items())).encode()).hexdigest()


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
    data = _load(root, settings.split)
    _check_qrels(data, root, settings.split)
    base_path, max_length, base_is_cross_encoder = _check_base(settings.base, settings.max_length)
    settings = replace(settings, max_length=max_length)
    extra, digest = _extra_queries(settings, root)
    run = RunDir.open(
        settings.out, {**settings.identity(), "unlabeled_digest": digest}, overwrite=settings.overwrite
    )
    queries = _queries(data, root, settings)
    run.start()
    rows_file, n_rows = run.rows(
        settings.loss, lambda f: _write_rows(f, data, queries.train, settings, extra)
    )
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
    verdict = _verdict(dev_metrics, first_loss, last_loss)
    for message in verdict:
        logger.warning("%s: %s", run.path, message)
    result = TrainResult(
        output_dir=str(run.path),
        base=settings.base,
        loss=settings.loss,
        steps=int(trainer.state.global_step),
        seconds=round(train_seconds, 1),
        train_queries=len(queries.train),
        dev_queries=len(_dev_ids(queries)),
        skipped_queries=queries.skipped,
        training_rows=n_rows,
        first_loss=first_loss,
        last_loss=last_loss,
        dev_metrics=dev_metrics,
        resumed_from=Path(run.resume).name if run.resume else None,
        dev_query_ids=tuple(_dev_ids(queries)),
        unlabeled_queries=len(extra),
        warnings=verdict,
        settings={
            **run.identity,
            "teacher_depth": settings.teacher_depth,
            "bf16": bf16,
            "dev": settings.dev_split
            or f"{settings.dev_fraction:.0%} of {settings.split} (seed {settings.seed})",
        },
    )
    (run.path / "README.md").write_text(_card(arch, run.path, result, history), encoding="utf-8")
    run.finish({**asdict(result), "loss_history": list(history)})
    return result


def _card(arch: Arch, out: Path, result: TrainResult, history: Sequence[float]) -> str:
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
