"""First stages: what a RAG chain's retriever returns, for the evaluation and ``tune``.

Three kinds, each giving every query its candidates (best first, ``retrieval_score`` set where the
first stage has one):

* :class:`BM25Retriever`: BM25 over the BEIR corpus (bm25s), built in;
* a TREC run file (:func:`read_trec_run`): ``qid Q0 docid rank score tag`` lines, as any retriever
  (Pyserini, a vector database export, ``eval``'s own runs) writes them;
* a retriever object, called once per query: a LangChain ``BaseRetriever`` or a LlamaIndex
  ``BaseRetriever`` (translated by its adapter module), or any function ``query -> [Candidate]``.

:func:`first_stage_candidates` turns any of them into candidates for a set of queries, checking the
ids against the BEIR data.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers.lexical import BM25Tokens, bm25s
from rerankers_plugins.types import Candidate

__all__ = [
    "BM25Retriever",
    "FirstStage",
    "FirstStageLike",
    "as_retriever",
    "first_stage_candidates",
    "read_trec_run",
]

logger = logging.getLogger(__name__)

#: a retriever as a function: the query's candidates, best first
RetrieveFn = Callable[[str], Sequence[Candidate]]
#: what ``tune`` and the evaluation take as a first stage: None (BM25), a TREC run file, or a retriever
FirstStageLike = str | Path | RetrieveFn | Any | None


class BM25Retriever:
    """Lucene-variant BM25 (k1=1.2, b=0.75), tokenized as :class:`~rerankers_plugins.scorers.lexical.BM25Scorer` tokenizes
    (:class:`~rerankers_plugins.scorers.lexical.BM25Tokens`: English stopwords, Snowball stemming
    unless ``stemming=False``).

    ``docs`` are Candidates (their ``text`` is indexed, ``id`` and ``metadata`` are carried to the
    results, ``retrieval_score`` is set to the BM25 score).
    """

    def __init__(
        self, docs: Sequence[Candidate], *, k1: float = 1.2, b: float = 0.75, stemming: bool = True
    ) -> None:
        if not docs:
            raise ConfigError("BM25Retriever needs at least one document")
        self._tokens = BM25Tokens(stemming=stemming)
        self.docs = list(docs)
        self._index = bm25s().BM25(k1=k1, b=b, method="lucene")
        self._index.index(self._tokens.ids([d.text for d in self.docs]), show_progress=False)

    def retrieve(self, query: str, k: int = 100) -> list[Candidate]:
        """The top ``k`` documents for ``query``, best first, with ``retrieval_score`` set."""
        return self.retrieve_many([query], k)[0]

    def retrieve_many(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        k = min(k, len(self.docs))
        ids, scores = self._index.retrieve(self._tokens.ids(queries), k=k, show_progress=False)
        out = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            hits = [
                Candidate(
                    text=self.docs[i].text,
                    id=self.docs[i].id,
                    metadata=self.docs[i].metadata,
                    retrieval_score=float(s),
                )
                for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)
                if s > 0
            ]
            out.append(hits)
        return out


def read_trec_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file: query id -> ``[(doc id, score), ...]`` best first (by score, then by the
    file's rank). ConfigError naming the line for anything that is not a TREC run: a line without
    six fields, a rank that is not an integer, a score that is not a finite number, a document
    listed twice for one query.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".trec", delete=False) as f:
    ...     _ = f.write("q1 Q0 d2 2 0.5 run\\nq1 Q0 d1 1 0.9 run\\n")
    >>> read_trec_run(f.name)
    {'q1': [('d1', 0.9), ('d2', 0.5)]}
    >>> os.unlink(f.name)
    """
    rows: dict[str, list[tuple[float, int, str]]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the run file {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path} is not a TREC run (qid Q0 docid rank score tag): line {number}"
        if len(fields) != 6:
            raise ConfigError(f"{where} has {len(fields)} fields: {line.strip()!r:.100}")
        qid, _, doc, rank_text, score_text, _ = fields
        try:
            rank, score = int(rank_text), float(score_text)
        except ValueError:
            raise ConfigError(
                f"{where}: rank {rank_text!r} or score {score_text!r} is not a number"
            ) from None
        if not math.isfinite(score):
            raise ConfigError(f"{where}: score {score_text!r} is not finite")
        rows.setdefault(qid, []).append((-score, rank, doc))
    if not rows:
        raise ConfigError(f"{path} is an empty run file")
    out: dict[str, list[tuple[str, float]]] = {}
    for qid, entries in rows.items():
        docs = [d for _, _, d in entries]
        if len(set(docs)) != len(docs):
            twice = sorted({d for d in docs if docs.count(d) > 1})
            raise ConfigError(f"{path} lists documents {twice[:5]} twice for query {qid!r}")
        out[qid] = [(d, -s) for s, _, d in sorted(entries)]
    return out


def as_retriever(retriever: Any) -> RetrieveFn:
    """A retriever object as a function ``query -> [Candidate]``: a LangChain or LlamaIndex
    retriever (recognised by its framework's base class, translated by the adapter module; its
    documents' ids name corpus documents), or a function returning Candidates, as it is."""
    for module, name, adapter in (
        ("langchain_core.retrievers", "BaseRetriever", "rerankers_plugins.integrations.langchain"),
        (
            "llama_index.core.base.base_retriever",
            "BaseRetriever",
            "rerankers_plugins.integrations.llama_index",
        ),
    ):
        loaded = sys.modules.get(module)  # an object of a framework never imported cannot be one of its
        base = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(base, type) and isinstance(retriever, base):
            translate: Callable[[Any], RetrieveFn] = importlib.import_module(adapter).retriever_candidates
            return translate(retriever)
    if callable(retriever):
        return retriever  # type: ignore[no-any-return]
    raise ConfigError(
        f"a first stage is a TREC run file, a LangChain or LlamaIndex retriever, or a function "
        f"query -> [Candidate]; got {type(retriever).__name__}"
    )


@dataclass(frozen=True)
class FirstStage:
    """Every query's first-stage candidates (at most ``depth``, best first, each document once)
    and what was noticed on the way (``notes``: duplicates dropped, queries the first stage left empty)."""

    name: str
    candidates: Mapping[str, tuple[Candidate, ...]]
    depth: int
    notes: list[str] = field(default_factory=list)
    #: the depth it was asked for (``depth`` is the longest list it returned)
    asked: int = 0

    def fewer_than(self, depth: int) -> int:
        """How many queries have fewer than ``depth`` candidates."""
        return sum(len(c) < depth for c in self.candidates.values())


def _unknown(what: str, ids: Sequence[str], source: str) -> ConfigError:
    shown = ", ".join(repr(i) for i in ids[:5])
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return ConfigError(f"{source} names {len(ids)} unknown {what}: {shown}{more}")


def _from_run(
    path: str | Path,
    corpus: Mapping[str, Candidate],
    known_queries: Collection[str],
    qids: Sequence[str],
    depth: int,
) -> dict[str, tuple[Candidate, ...]]:
    run = read_trec_run(path)
    unknown_q = sorted(q for q in run if q not in known_queries)
    if unknown_q:
        raise _unknown("query ids (not in queries.jsonl)", unknown_q, f"the run {path}")
    unknown_d = sorted({d for q in qids for d, _ in run.get(q, []) if d not in corpus})
    if unknown_d:
        raise _unknown("document ids (not in corpus.jsonl)", unknown_d, f"the run {path}")
    out = {}
    for q in qids:
        out[q] = tuple(
            Candidate(corpus[d].text, d, corpus[d].metadata, retrieval_score=s)
            for d, s in run.get(q, [])[:depth]
        )
    return out


def _from_retriever(
    retrieve: RetrieveFn,
    corpus: Mapping[str, Candidate],
    queries: Mapping[str, str],
    qids: Sequence[str],
    depth: int,
) -> tuple[dict[str, tuple[Candidate, ...]], list[str]]:
    out: dict[str, tuple[Candidate, ...]] = {}
    unknown: set[str] = set()
    duplicates = 0
    for q in qids:
        try:
            found = list(retrieve(queries[q]))
        except Exception as exc:
            raise ConfigError(
                f"the first-stage retriever failed on query {q!r}: {type(exc).__name__}: {exc}"
            ) from exc
        kept: dict[str, Candidate] = {}
        for i, c in enumerate(found):
            if not isinstance(c, Candidate):
                raise ConfigError(
                    f"the retriever returned {type(c).__name__} for query {q!r}, not a Candidate"
                )
            if c.id is None:
                raise ConfigError(
                    f"the retriever's result {i} for query {q!r} carries no id: give its documents the "
                    "corpus ids (LangChain Document.id, LlamaIndex Document(id_=...)) or name the metadata key"
                )
            if c.id not in corpus:
                unknown.add(c.id)
            if c.id in kept:
                duplicates += 1
            else:
                kept[c.id] = c
        out[q] = tuple(kept.values())[:depth]
    if unknown:
        raise _unknown("document ids (not in corpus.jsonl)", sorted(unknown), "the retriever")
    notes = (
        [f"{duplicates} duplicate results dropped (each document kept at its best rank)"]
        if duplicates
        else []
    )
    return out, notes


def first_stage_candidates(
    first_stage: FirstStageLike,
    corpus: Sequence[Candidate],
    queries: Mapping[str, str],
    qids: Sequence[str],
    depth: int,
    *,
    known_queries: Collection[str] | None = None,
) -> FirstStage:
    """The candidates of ``qids`` (texts in ``queries``) from ``first_stage`` (None: BM25 over
    ``corpus``; a path: a TREC run file, whose query ids must be among ``known_queries``, by default
    those of ``queries``; otherwise a retriever, see :func:`as_retriever`), at most ``depth`` each."""
    by_id = {c.id: c for c in corpus if c.id is not None}
    notes: list[str] = []
    if first_stage is None:
        hits = BM25Retriever(corpus).retrieve_many([queries[q] for q in qids], k=depth)
        found = {q: tuple(h) for q, h in zip(qids, hits, strict=True)}
        name = "BM25"
    elif isinstance(first_stage, str | Path):
        found = _from_run(
            first_stage, by_id, queries if known_queries is None else known_queries, qids, depth
        )
        name = f"run {Path(first_stage).name}"
    else:
        found, notes = _from_retriever(as_retriever(first_stage), by_id, queries, qids, depth)
        name = f"retriever {type(first_stage).__name__}"
    empty = sorted(q for q, c in found.items() if not c)
    if empty:
        notes.append(
            f"{len(empty)} queries have no candidates ({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})"
        )
    longest = max((len(c) for c in found.values()), default=0)
    if longest == 0:
        raise ConfigError(f"the first stage ({name}) returned no candidates for any query")
    return FirstStage(name, found, longest, notes, depth)
