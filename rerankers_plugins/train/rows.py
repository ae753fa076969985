"""Training rows, streamed: hard negatives mined with a first stage of the package, in the column
layout each sentence-transformers loss expects (BCE pairs, listwise groups with graded labels), or
margin-MSE groups distilled from a teacher pipeline's per-query z-scores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.beir import BeirData
from rerankers_plugins.ops.fusion import zscore
from rerankers_plugins.train.negatives import (
    FirstStage,
    _rng,
    as_pipeline,
    batch_run,
    first_stage,
    mine_negatives,
)
from rerankers_plugins.train.settings import TEACHER_DEPTH, PipelineSpec, TrainSettings
from rerankers_plugins.types import Candidate

__all__ = ["training_rows", "write_rows"]


def training_rows(
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
    stage = first_stage(
        negatives,
        data.corpus,
        model=negatives_model,
        depth=max(depth, 100),
        queries={**queries, **(unlabeled or {})},
    )
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

    run = batch_run(teacher)  # a batch job's scores: the teacher is not run again
    if run is None:
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
            if run is not None:
                scored = dict(run.get(qid, []))
            else:
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


def write_rows(
    f: IO[str], data: BeirData, qids: Sequence[str], settings: TrainSettings, extra: Mapping[str, str]
) -> int:
    n = 0
    for row in training_rows(
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
