"""Hard-negative mining with the package's own first stages.

A first stage maps queries to ranked candidates from the corpus: BM25 (bm25s), a bi-encoder over
the whole corpus, or BM25 candidates reranked by any pipeline the package can build. Negatives for
a query are drawn from its top ``depth`` candidates after removing every judged positive; the draw
is seeded per query (``seed`` and the query id), so it does not depend on the order queries are
processed in, or on how many there are.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.train.settings import PipelineSpec
from rerankers_plugins.types import Candidate

if TYPE_CHECKING:
    from rerankers_plugins.pipeline.leaves import ScorerLike

__all__ = ["FirstStage", "batch_run", "first_stage", "mine_negatives"]

logger = logging.getLogger(__name__)

#: queries -> ranked candidates, best first, at most ``k`` each
FirstStage = Callable[[Sequence[str], int], list[list[Candidate]]]

_CHUNK = 256  # queries per first-stage call: bounded memory for any number of queries


def _bm25(corpus: Sequence[Candidate]) -> FirstStage:
    from rerankers_plugins.eval.first_stage import BM25Retriever

    retriever = BM25Retriever(corpus)
    return retriever.retrieve_many


def _dense(corpus: Sequence[Candidate], model: str) -> FirstStage:
    """Cosine top-k over the whole corpus with a sentence-transformers bi-encoder; the corpus is
    encoded once, in chunks, into one float32 matrix ``[n_docs, dim]``."""
    from rerankers_plugins._optional import require
    from rerankers_plugins.scorers.bi_encoder import BiEncoderScorer

    torch = require("torch", "cross-encoder")
    encoder = BiEncoderScorer(model)
    docs = list(corpus)
    parts = [encoder.embed_documents([d.text for d in docs[i : i + 1024]]) for i in range(0, len(docs), 1024)]
    matrix = torch.cat(parts) if parts else torch.zeros(0, 1)

    def retrieve(queries: Sequence[str], k: int) -> list[list[Candidate]]:
        out = []
        with torch.inference_mode():
            for query in queries:
                sims = matrix @ encoder.embed_query(query)
                top = torch.topk(sims, min(k, len(docs)))
                out.append(
                    [
                        Candidate(
                            text=docs[i].text,
                            id=docs[i].id,
                            metadata=docs[i].metadata,
                            retrieval_score=float(s),
                        )
                        for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                    ]
                )
        return out

    return retrieve


def _reranked(corpus: Sequence[Candidate], pipeline: ScorerLike, depth: int) -> FirstStage:
    """BM25's top ``depth`` reordered by ``pipeline`` (a scorer or strategy)."""
    from rerankers_plugins.pipeline.rerank import rerank

    bm25 = _bm25(corpus)

    def retrieve(queries: Sequence[str], k: int) -> list[list[Candidate]]:
        out = []
        for query, cands in zip(queries, bm25(queries, max(k, depth)), strict=True):
            out.append([s.candidate for s in rerank(query, cands, pipeline)][:k])
        return out

    return retrieve


def batch_run(spec: PipelineSpec | None) -> dict[str, list[tuple[str, float]]] | None:
    """The run of a batch job's output (``rerankers-plugins batch``) that ``spec`` names: its
    directory or its ``run.trec`` (any TREC run file), as query id -> ``[(doc id, score), ...]``
    best first; None when ``spec`` names no such thing. ConfigError for a job not finished yet."""
    if not isinstance(spec, str):
        return None
    from pathlib import Path

    from rerankers_plugins.eval.first_stage import read_trec_run

    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        if not (path / "run.trec").is_file():
            raise ConfigError(
                f"the batch job in {path} is not finished (no run.trec): run it again to complete it"
            )
        return read_trec_run(path / "run.trec")
    if path.suffix == ".trec" and path.is_file():
        return read_trec_run(path)
    return None


def _from_run(
    run: Mapping[str, Sequence[tuple[str, float]]], corpus: Sequence[Candidate], queries: Mapping[str, str]
) -> FirstStage:
    """A first stage that answers from a run: a query's documents in the run's order (their texts
    from the corpus, the run's score as the retrieval score); a query the run lacks gets none."""
    docs = {str(c.id): c for c in corpus}
    unknown = sorted({d for ranked in run.values() for d, _ in ranked if d not in docs})
    if unknown:
        raise ConfigError(f"the run names documents the corpus does not have: {unknown[:5]}")
    ids: dict[str, str] = {}
    for qid, text in queries.items():
        if qid in run:
            ids.setdefault(text, qid)
    missing = sum(1 for q in queries if q not in run)
    if missing:
        logger.warning(
            "the run has no documents for %d of %d queries: they get no negatives", missing, len(queries)
        )

    def retrieve(texts: Sequence[str], k: int) -> list[list[Candidate]]:
        out = []
        for text in texts:
            ranked = run.get(ids.get(text, ""), [])[:k]
            out.append(
                [
                    Candidate(docs[d].text, id=d, metadata=docs[d].metadata, retrieval_score=s)
                    for d, s in ranked
                ]
            )
        return out

    return retrieve


def first_stage(
    kind: PipelineSpec,
    corpus: Sequence[Candidate],
    *,
    model: str = "minilm",
    depth: int = 100,
    queries: Mapping[str, str] | None = None,
) -> FirstStage:
    """Build a first stage by name: ``"bm25"``, ``"bi-encoder"`` (``model`` over the whole corpus),
    a pipeline spec in the command-line form ``KIND[:key=value,...]`` (e.g. ``"colbert:model=minilm"``),
    or a scorer / strategy object; the last two rerank BM25's top ``depth``. A batch job's output
    directory (or a TREC run file) answers from its run, for ``queries`` (id -> text)."""
    run = batch_run(kind)
    if run is not None:
        return _from_run(run, corpus, queries or {})
    if kind == "bm25":
        return _bm25(corpus)
    if kind == "bi-encoder":
        return _dense(corpus, model)
    return _reranked(corpus, as_pipeline(kind), depth)


def as_pipeline(spec: PipelineSpec) -> ScorerLike:
    """A scorer or strategy from a spec: ``"KIND[:key=value,...]"`` (a registry scorer, as on the
    ``eval`` command line), ``"FILE.toml#NAME"`` (a pipeline of a pipeline file), or an object,
    returned as it is."""
    if not isinstance(spec, str):
        return spec
    from rerankers_plugins.spec import (
        build_pipeline,
        build_pipelines,
        load_pipeline_file,
        parse_pipeline_arg,
    )

    path, sep, name = spec.partition("#")
    if sep and path.endswith(".toml"):
        pipelines = build_pipelines(load_pipeline_file(path))
        if name not in pipelines:
            raise ConfigError(f"{path} has no pipeline {name!r}; it has {', '.join(sorted(pipelines))}")
        return pipelines[name]
    _, parsed = parse_pipeline_arg(f"pipeline={spec}")
    return build_pipeline(parsed)


def _rng(seed: int, qid: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _draw(
    qid: str, cands: Sequence[Candidate], judged: Mapping[str, int], per_query: int, depth: int, seed: int
) -> list[Candidate]:
    """``per_query`` of the top ``depth`` of ``cands`` not judged positive, in their order (seeded)."""
    positives = {d for d, g in judged.items() if g > 0}
    pool = [c for c in cands if str(c.id) not in positives][:depth]
    picked = sorted(_rng(seed, qid).sample(range(len(pool)), min(per_query, len(pool))))
    return [pool[i] for i in picked]


def mine_negatives(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    stage: FirstStage,
    *,
    per_query: int,
    depth: int = 30,
    seed: int = 0,
) -> Iterator[tuple[str, list[Candidate]]]:
    """Yield ``(query id, negatives)`` for each query, in sorted id order.

    The negatives are ``per_query`` candidates drawn without replacement from the query's top
    ``depth`` first-stage candidates that are not judged positive (grade > 0), kept in first-stage
    order. Fewer are returned when fewer exist. Deterministic for a given ``seed``.
    """
    if per_query < 1:
        raise ConfigError(f"per_query must be >= 1, got {per_query!r}")
    if depth < per_query:
        raise ConfigError(f"depth ({depth}) must be at least per_query ({per_query})")
    qids = sorted(queries)
    for start in range(0, len(qids), _CHUNK):
        chunk = qids[start : start + _CHUNK]
        ranked = stage(
            [queries[q] for q in chunk], depth + len(max((qrels.get(q, {}) for q in chunk), key=len))
        )
        for qid, cands in zip(chunk, ranked, strict=True):
            yield qid, _draw(qid, cands, qrels.get(qid, {}), per_query, depth, seed)
