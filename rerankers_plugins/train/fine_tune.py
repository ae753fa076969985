"""Fine-tune a cross-encoder on BEIR-format data with sentence-transformers' own trainer and losses.

Flow: read the split's qrels (checked: unknown documents, queries with no positive), carve a dev
split from the training queries (or read one), mine hard negatives with a first stage of the
package, write the training rows to a JSON-lines file (streamed, so memory stays bounded for any
corpus), train with ``CrossEncoderTrainer`` (checkpoints every ``save_steps``; an interrupted run
resumes from the last one), save the model where ``CrossEncoderScorer`` loads it, score the dev
queries with the evaluation harness, and write a model card.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.beir import BeirData, load_beir, read_qrels, read_queries
from rerankers_plugins.scorers._hf import cpu_has_fast_bf16, load_model, resolve_device, resolve_model
from rerankers_plugins.train.negatives import _rng, as_pipeline, first_stage, mine_negatives
from rerankers_plugins.types import Candidate

__all__ = ["ARCHS", "LOSSES", "TrainResult", "fine_tune"]

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("bce", "listwise", "margin-mse")
ARCHS: tuple[str, ...] = ("cross-encoder", "poly-encoder")
_DONE = "training.json"
_FORMAT = "rerankers-plugins training 1"
_WORK = ".training"
_NOT_ENCODERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")
#: first-stage candidates a distillation teacher scores per query: what a reranker sees in use
TEACHER_DEPTH = 100


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


def _check_base(base: str, max_length: int) -> tuple[str, int, bool]:
    """The base's directory or id, after checking it is an encoder (or a one-label cross-encoder),
    ``max_length`` capped at the model's position limit (logged when it is), and whether the base
    already is a cross-encoder."""
    transformers = require("transformers", "cross-encoder")
    path = resolve_model(base)
    config = load_model("transformers", path, lambda: transformers.AutoConfig.from_pretrained(path))
    architectures = list(getattr(config, "architectures", None) or [])
    if (
        getattr(config, "is_encoder_decoder", False)
        or getattr(config, "is_decoder", False)
        or any(a.endswith(_NOT_ENCODERS) for a in architectures)
    ):
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


def _manifest(out: Path) -> list[str] | None:
    """The files a finished run wrote, from its ``training.json``; None if that is not ours."""
    try:
        info = json.loads((out / _DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != _FORMAT or not isinstance(info.get("files"), list):
        return None
    return [str(f) for f in info["files"]]


def _run_identity(out: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((out / _WORK / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == _FORMAT else None


def _fresh_pooler(model: Any, torch: Any) -> None:
    """Re-initialise the [CLS] pooler of an encoder that was not trained as a classifier.

    An embedding model trained with mean pooling (all-MiniLM-L6-v2) keeps a pooler with tiny weights
    (std 0.009): its output barely varies between inputs, so the new head's gradient reaches the
    encoder ~50x attenuated and BCE training sits on the constant predictor (measured on SciFact:
    a flat loss for a whole epoch at lr 2e-5 and 1e-4). Xavier-uniform weights restore the signal."""
    hf = getattr(model, "model", None)
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    dense = getattr(getattr(body, "pooler", None), "dense", None)
    if isinstance(dense, torch.nn.Linear):
        with torch.no_grad():
            torch.nn.init.xavier_uniform_(dense.weight)
            dense.bias.zero_()
        logger.info("re-initialised the encoder's [CLS] pooler for the new classification head")


def _prepare_out(out: Path, overwrite: bool, identity: Mapping[str, Any]) -> str | None:
    """Decide what an existing output directory means: a finished run of ours (refused unless
    ``overwrite``, which deletes only the files that run wrote), an interrupted run of ours with
    the same settings and data (resumed: returns its last checkpoint), or empty. Anything else,
    including a directory holding files no run of ours wrote, is refused and left untouched."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return None
    finished = _manifest(out)
    interrupted = _run_identity(out)
    ours = set(finished or []) | {_DONE, _WORK} if finished is not None else {_WORK}
    foreign = sorted(entries - ours)
    if foreign or (finished is None and interrupted is None):
        raise ConfigError(
            f"output directory {out} holds files no training run wrote ({', '.join(foreign[:5]) or 'unreadable state'}); "
            "choose a new or empty directory"
        )
    if finished is not None:
        if not overwrite:
            raise ConfigError(
                f"output directory {out} already holds a trained model; pass overwrite=True (--overwrite)"
            )
        for name in [*finished, _DONE, _WORK]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return None
    if overwrite:
        shutil.rmtree(out / _WORK)
        return None
    changed = sorted(
        k for k in set(identity) | set(interrupted or {}) if identity.get(k) != (interrupted or {}).get(k)
    )
    if changed:
        raise ConfigError(
            f"{out} holds an interrupted run with other settings or data ({', '.join(changed)} differ): "
            "rerun with the same settings to resume it, or pass overwrite=True (--overwrite) to start over"
        )
    checkpoints = sorted(
        (p for p in (out / _WORK / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(checkpoints[-1]) if checkpoints else None


def _normal(text: str) -> str:
    """A query's text for matching: case and runs of whitespace ignored."""
    return " ".join(text.casefold().split())


def _unlabeled(path: Path, root: Path) -> dict[str, str]:
    """Queries to distil on from a ``queries.jsonl``-style file (``_id``, ``text``), less every query
    that a qrels file of ``root`` judges, by id or by text (case and spacing ignored): those are for
    training or evaluation with their labels, and a test query must never be trained on, labelled
    or not. A repeated id or text is used once (warned); a row without text is refused."""
    if not path.is_file():
        raise ConfigError(f"unlabeled queries file {path} not found")
    queries: dict[str, str] = {}
    seen: set[str] = set()
    repeated = 0
    n = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                n += 1
                if not line.strip():
                    continue
                row = json.loads(line)
                qid, text = row["_id"], row["text"]
                if not isinstance(qid, (str, int)) or isinstance(qid, bool):
                    raise TypeError(f"'_id' must be a string or an int, got {qid!r}")
                if not isinstance(text, str) or not text.strip():
                    raise TypeError(f"'text' must be a non-empty string, got {text!r}")
                if str(qid) in queries or _normal(text) in seen:
                    repeated += 1
                    continue
                queries[str(qid)] = text
                seen.add(_normal(text))
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{path} line {n} is not a query row ({{'_id': ..., 'text': ...}}): {exc}") from exc
    if repeated:
        logger.warning("%s: %d repeated query ids or texts used once", path, repeated)
    judged = {q for split in _splits(root) for q in read_qrels(root / "qrels" / f"{split}.tsv")}
    judged_texts = {
        _normal(str(text)) for qid, text in read_queries(root / "queries.jsonl").items() if qid in judged
    }
    by_id = {q for q in queries if q in judged}
    by_text = {q for q, text in queries.items() if q not in by_id and _normal(text) in judged_texts}
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
    kept = {q: text for q, text in queries.items() if q not in by_id and q not in by_text}
    if not kept:
        raise ConfigError(f"{path} has no unlabeled query left to distil on (rows: {len(queries)})")
    return kept


def _carve_dev(qids: Sequence[str], fraction: float, seed: int) -> set[str]:
    if not 0 <= fraction < 1:
        raise ConfigError(f"dev_fraction must be in [0, 1), got {fraction!r}")
    shuffled = sorted(qids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: round(len(shuffled) * fraction)])


def _zscores(values: Sequence[float]) -> list[float]:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) or 1.0
    return [(v - mean) / std for v in values]


def _rows(
    data: BeirData,
    qids: Sequence[str],
    *,
    loss: str,
    negatives: Any,
    teacher: Any,
    per_query: int,
    depth: int,
    seed: int,
    negatives_model: str,
    unlabeled: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Training rows in the column layout each sentence-transformers loss expects."""
    texts = {str(c.id): c.text for c in data.corpus}
    queries = {q: data.queries[q] for q in qids}
    stage = first_stage(negatives, data.corpus, model=negatives_model, depth=max(depth, 100))
    if loss == "margin-mse":
        from rerankers_plugins.pipeline.leaves import as_strategy, require_scores
        from rerankers_plugins.pipeline.rerank import rerank

        judge = as_pipeline(teacher)
        require_scores(as_strategy(judge), "a distillation teacher")
        queries.update(unlabeled or {})
        every = [*qids, *sorted(unlabeled or {})]
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
        return
    for qid, negs in mine_negatives(queries, data.qrels, stage, per_query=per_query, depth=depth, seed=seed):
        positives = [d for d, g in sorted(data.qrels[qid].items()) if g > 0]
        if loss == "bce":
            for d in positives:
                yield {"query": queries[qid], "document": texts[d], "label": 1.0}
            for c in negs:
                yield {"query": queries[qid], "document": c.text, "label": 0.0}
        else:  # listwise: one list per query, graded labels
            docs = [texts[d] for d in positives] + [c.text for c in negs]
            labels = [float(data.qrels[qid][d]) for d in positives] + [0.0] * len(negs)
            yield {"query": queries[qid], "docs": docs, "labels": labels}


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
    order = sorted(by_id, key=lambda d: -scores[d])
    positives = [d for d in order if judged.get(d, 0) > 0]
    anchor = positives[0] if positives else order[0]
    head = {str(c.id) for c in cands[:depth]}
    rest = [d for d in order if d != anchor and d in head and judged.get(d, 0) <= 0]
    picked = sorted(_rng(seed, qid).sample(range(len(rest)), min(per_query, len(rest))))
    group = [anchor] + [rest[i] for i in picked]
    if len(group) < 2:
        return
    z = _zscores([scores[d] for d in by_id])
    zmap = dict(zip(by_id, z, strict=True))
    row: dict[str, Any] = {"query": query, "positive": by_id[anchor].text}
    for i, d in enumerate(group[1:], 1):
        row[f"negative_{i}"] = by_id[d].text
    row["label"] = [zmap[d] for d in group]
    # every row must have the same columns: pad short groups by repeating the last negative
    for i in range(len(group), per_query + 1):
        row[f"negative_{i}"] = row[f"negative_{len(group) - 1}"]
        row["label"].append(row["label"][-1])
    yield row


def fine_tune(
    data_dir: str | os.PathLike[str],
    base: str,
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    negatives: Any = "bm25",
    negatives_model: str = "minilm",
    per_query: int = 8,
    depth: int = 30,
    epochs: float = 1.0,
    max_steps: int | None = None,
    max_length: int = 256,
    loss: str = "bce",
    teacher: Any = None,
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
    codes: int = 16,
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
    interrupted run there is resumed from its last checkpoint.

    A cross-encoder trains with sentence-transformers' ``CrossEncoderTrainer`` and losses; a
    poly-encoder (:mod:`rerankers_plugins.scorers.poly_encoder`) with transformers' ``Trainer`` on
    the same rows and the same losses computed on its scores (:mod:`rerankers_plugins.train.poly`).
    """
    st = require("sentence_transformers", "cross-encoder")
    require("datasets", "train")
    torch = require("torch", "cross-encoder")
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {ARCHS}, got {arch!r}")
    if isinstance(codes, bool) or not isinstance(codes, int) or codes < 1:
        raise ConfigError(f"codes must be a positive int, got {codes!r}")
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "margin-mse" and teacher is None:
        raise ConfigError("loss='margin-mse' distils from a teacher: pass teacher= (--teacher PIPELINE)")
    if unlabeled is not None and loss != "margin-mse":
        raise ConfigError(
            f"unlabeled queries have no labels to learn from with loss={loss!r}: they are used by "
            "distillation (loss='margin-mse' with a teacher)"
        )
    for name, value, low in (
        ("per_query", per_query, 1),
        ("batch_size", batch_size, 1),
        ("max_length", max_length, 8),
        ("depth", depth, per_query if isinstance(per_query, int) else 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    root = Path(data_dir)
    out_dir = Path(out)
    t0 = time.perf_counter()
    data = _load(root, split)
    _check_qrels(data, root, split)
    base_path, max_length, base_is_cross_encoder = _check_base(base, max_length)
    extra = _unlabeled(Path(unlabeled), root) if unlabeled is not None else {}
    identity = {
        "format": _FORMAT,
        "arch": arch,
        "codes": codes if arch == "poly-encoder" else None,
        "data": str(root.resolve()),
        "split": split,
        "base": base,
        "loss": loss,
        "negatives": negatives if isinstance(negatives, str) else repr(negatives),
        "negatives_model": negatives_model,
        "teacher": teacher if teacher is None or isinstance(teacher, str) else repr(teacher),
        "per_query": per_query,
        "depth": depth,
        "epochs": epochs,
        "max_steps": max_steps,
        "max_length": max_length,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "save_steps": save_steps,
        "seed": seed,
        "dev_split": dev_split,
        "dev_fraction": dev_fraction,
        "teacher_depth": max(depth, TEACHER_DEPTH) if loss == "margin-mse" else None,
        "unlabeled": None if unlabeled is None else str(Path(unlabeled).resolve()),
        "unlabeled_digest": (
            hashlib.sha256(json.dumps(sorted(extra.items())).encode()).hexdigest() if extra else None
        ),
    }
    resume = _prepare_out(out_dir, overwrite, identity)

    labelled = sorted(q for q, judged in data.qrels.items() if any(g > 0 for g in judged.values()))
    skipped = len(data.qrels) - len(labelled)
    if skipped:
        logger.warning(
            "%d of %d queries in qrels/%s.tsv have no positive judgment: skipped",
            skipped,
            len(data.qrels),
            split,
        )
    if dev_split is not None:
        dev_data = _load(root, dev_split)
        _check_qrels(dev_data, root, dev_split)
        dev = set(dev_data.qrels)
        dev_qrels: Mapping[str, Mapping[str, int]] = dev_data.qrels
        dev_queries = dev_data.queries
    else:
        dev = _carve_dev(labelled, dev_fraction, seed)
        dev_qrels, dev_queries = data.qrels, data.queries
    train_q = [q for q in labelled if q not in dev]
    if not train_q:
        raise ConfigError(f"no training queries left in {split!r} (with a positive, outside the dev split)")

    work = out_dir / _WORK
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    rows_file = work / f"rows-{loss}.jsonl"
    if not (work / f"rows-{loss}.done").is_file():
        n_rows = 0
        with rows_file.open("w", encoding="utf-8") as f:
            for row in _rows(
                data,
                train_q,
                loss=loss,
                negatives=negatives,
                teacher=teacher,
                per_query=per_query,
                depth=depth,
                seed=seed,
                negatives_model=negatives_model,
                unlabeled=extra,
            ):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n_rows += 1
        (work / f"rows-{loss}.done").write_text(str(n_rows))
    n_rows = int((work / f"rows-{loss}.done").read_text())
    datasets = require("datasets", "train")
    train_ds = datasets.load_dataset(
        "json", data_files=str(rows_file), split="train", cache_dir=str(work / "hf-datasets")
    )

    torch.manual_seed(seed)
    dev_name = resolve_device(device)
    bf16 = (dev_name == "cpu" and cpu_has_fast_bf16()) or (
        dev_name.startswith("cuda") and torch.cuda.is_bf16_supported()
    )
    poly = arch == "poly-encoder"
    per_device = batch_size if loss == "bce" else max(1, batch_size // (per_query + 1))
    args_type = (
        require("transformers", "cross-encoder").TrainingArguments
        if poly
        else st.cross_encoder.CrossEncoderTrainingArguments
    )
    args = args_type(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=per_device,
        learning_rate=learning_rate,
        # transformers 5 takes the warm-up ratio as a float warmup_steps; 4.x as warmup_ratio
        **(
            {"warmup_steps": float(warmup_ratio)}
            if int(transformers_major()) >= 5
            else {"warmup_ratio": warmup_ratio}
        ),
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=dev_name == "cpu",
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=0.05,  # a ratio of the total steps: about 20 loss readings per run
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        **({"remove_unused_columns": False} if poly else {}),
    )
    if poly:
        from rerankers_plugins.scorers.poly_encoder import (
            CONFIG_NAME,
            build_poly_encoder,
            load_poly_encoder,
        )
        from rerankers_plugins.train.poly import poly_trainer

        model = load_model(
            "poly-encoder",
            base_path,
            lambda: (
                load_poly_encoder(base_path)
                if (Path(base_path) / CONFIG_NAME).is_file()
                else build_poly_encoder(base_path, codes=codes, max_length=max_length, seed=seed)
            ),
            cls="PolyEncoderScorer",
        )
        model.settings.update({"codes": int(model.codes.shape[0]), "max_length": max_length, "base": base})
        trainer = poly_trainer(
            model.to(dev_name),
            args,
            train_ds,
            loss=loss,
            per_query=per_query,
            max_length=max_length,
            callbacks=callbacks,
        )
    else:
        model = load_model(
            "cross-encoder",
            base_path,
            lambda: st.CrossEncoder(base_path, num_labels=1, max_length=max_length, device=dev_name),
        )
        if not base_is_cross_encoder:
            _fresh_pooler(model, torch)
        losses = st.cross_encoder.losses
        if loss == "bce":
            criterion = losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(per_query)))
        elif loss == "listwise":
            criterion = losses.ListNetLoss(model)
        else:
            criterion = losses.MarginMSELoss(model)
        trainer = st.cross_encoder.CrossEncoderTrainer(
            model=model, args=args, train_dataset=train_ds, loss=criterion, callbacks=list(callbacks)
        )
    if resume:
        logger.warning("resuming the interrupted run in %s from %s", out_dir, Path(resume).name)
    trainer.train(resume_from_checkpoint=resume)
    history = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    steps = int(trainer.state.global_step)
    model.save_pretrained(str(out_dir))
    train_seconds = time.perf_counter() - t0

    dev_metrics: dict[str, float] = {}
    dev_ids = sorted(q for q in dev if any(g > 0 for g in dev_qrels.get(q, {}).values()))
    if dev_ids:
        from rerankers_plugins.eval.harness import evaluate
        from rerankers_plugins.scorers.cross_encoder import CrossEncoderScorer
        from rerankers_plugins.scorers.poly_encoder import PolyEncoderScorer

        dev_data = BeirData(
            corpus=data.corpus,
            queries={q: dev_queries[q] for q in dev_ids},
            qrels={q: dict(dev_qrels[q]) for q in dev_ids},
        )
        report = evaluate(
            dev_data,
            {"fine-tuned": PolyEncoderScorer(str(out_dir)) if poly else CrossEncoderScorer(str(out_dir))},
            k=dev_depth,
            metrics=("ndcg@10", "mrr@10"),
            progress=progress,
        )
        for r in report.results:
            for m, v in r.metrics.items():
                dev_metrics[f"{'bm25' if r.name == 'BM25' else 'model'}_{m}"] = round(v, 4)

    first_loss = history[0] if history else None
    last_loss = history[-1] if history else None
    verdict = _verdict(dev_metrics, first_loss, last_loss)
    for message in verdict:
        logger.warning("%s: %s", out_dir, message)
    result = TrainResult(
        output_dir=str(out_dir),
        base=base,
        loss=loss,
        steps=steps,
        seconds=round(train_seconds, 1),
        train_queries=len(train_q),
        dev_queries=len(dev_ids),
        skipped_queries=skipped,
        training_rows=n_rows,
        first_loss=first_loss,
        last_loss=last_loss,
        dev_metrics=dev_metrics,
        resumed_from=Path(resume).name if resume else None,
        dev_query_ids=tuple(dev_ids),
        unlabeled_queries=len(extra),
        warnings=verdict,
        settings={
            **{key: value for key, value in identity.items() if key != "format"},
            "bf16": bf16,
            "dev": dev_split or f"{dev_fraction:.0%} of {split} (seed {seed})",
        },
    )
    _write_card(out_dir, result, history)
    with contextlib.suppress(OSError):
        shutil.rmtree(work)
    return result


def _write_card(out: Path, result: TrainResult, history: Sequence[float]) -> None:
    dev = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.dev_metrics.items()) or "| - | - |"
    if result.warnings:
        dev += "\n\n**Warning.** " + "\n\n**Warning.** ".join(result.warnings)
    settings = "\n".join(f"| {k} | {v} |" for k, v in result.settings.items())
    if result.settings.get("arch") == "poly-encoder":
        head = f"""---
library_name: transformers
pipeline_tag: text-ranking
tags: [poly-encoder, reranker, rerankers-plugins]
---

# Poly-encoder fine-tuned with `rerankers-plugins train --arch poly-encoder`

Load it with `PolyEncoderScorer("{out}")` (or `PolyEncoderRerank(model=...)` in either adapter).
{result.settings.get("codes")} document codes; scores are logits (unbounded dot products).

"""
    else:
        head = f"""---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, reranker, rerankers-plugins]
---

# Cross-encoder fine-tuned with `rerankers-plugins train`

Load it with `CrossEncoderScorer("{out}")` (or any adapter's `model=`), or with
sentence-transformers' `CrossEncoder`. One output label; scores are sigmoid probabilities.

"""
    card = (
        head
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
    (out / "README.md").write_text(card, encoding="utf-8")
    files = sorted(p.name for p in out.iterdir() if p.name not in (_DONE, _WORK))
    info = {"format": _FORMAT, **asdict(result), "loss_history": list(history), "files": files}
    (out / _DONE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
