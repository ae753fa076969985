"""A batch job's input: rows of (query_id, query, doc_id, text[, retrieval_score]) read from parquet,
JSON Lines, or a TREC run with a BEIR directory; checked row by row, fingerprinted, grouped by query
and cut into shards.

Every input row ends up exactly once either in a query's candidates or among the bad rows, with the
reason: an empty text, a query with no text (or another text than the query id's first row), a
missing id, a candidate listed twice for one query (the second listing), a retrieval score that is
not a finite number, a line that is not JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import Candidate

__all__ = ["BadRow", "JobInput", "QueryRows", "Row", "Shard", "read_input"]

#: the columns a row needs; any other column is carried as the candidate's metadata
COLUMNS = ("query_id", "query", "doc_id", "text")


@dataclass(frozen=True)
class Row:
    """One candidate of one query, as read: ``row`` is its position in the input (0-based)."""

    row: int
    query_id: str
    query: str
    doc_id: str
    text: str
    retrieval_score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def candidate(self) -> Candidate:
        return Candidate(
            text=self.text, id=self.doc_id, metadata=dict(self.metadata), retrieval_score=self.retrieval_score
        )


@dataclass(frozen=True)
class BadRow:
    """An input row left out of the job, and why (what the errors file holds)."""

    row: int
    query_id: str | None
    doc_id: str | None
    reason: str

    def record(self, shard: str) -> dict[str, Any]:
        return {
            "row": self.row,
            "query_id": self.query_id,
            "doc_id": self.doc_id,
            "reason": self.reason,
            "shard": shard,
        }


@dataclass(frozen=True)
class QueryRows:
    """A query and its candidates in input order (reranked together), plus its rows left out."""

    query_id: str
    query: str
    rows: tuple[Row, ...]
    bad: tuple[BadRow, ...] = ()


@dataclass(frozen=True)
class Shard:
    """The unit a job writes at once: consecutive queries of the input, named by their position."""

    index: int
    queries: tuple[QueryRows, ...]

    @property
    def id(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def rows(self) -> int:
        return sum(len(q.rows) + len(q.bad) for q in self.queries)

    @property
    def pairs(self) -> int:
        return sum(len(q.rows) for q in self.queries)


@dataclass(frozen=True)
class JobInput:
    """Every row of an input, checked and grouped by query (in order of first appearance)."""

    source: str
    fingerprint: str
    queries: tuple[QueryRows, ...]
    #: rows with no query id (no query to go with)
    orphans: tuple[BadRow, ...] = ()

    @property
    def rows(self) -> int:
        return sum(len(q.rows) + len(q.bad) for q in self.queries) + len(self.orphans)

    def shards(self, queries_per_shard: int) -> list[Shard]:
        """Consecutive runs of ``queries_per_shard`` queries; rows without a query id go with the
        first shard (as bad rows), so every row belongs to exactly one shard."""
        out = [
            Shard(i, self.queries[start : start + queries_per_shard])
            for i, start in enumerate(range(0, len(self.queries), queries_per_shard))
        ]
        if self.orphans:
            first = out[0].queries if out else ()
            orphan = QueryRows("", "", (), self.orphans)
            out[:1] = [Shard(0, (orphan, *first))]
        return out


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    row: int
    values: Mapping[str, Any] | None  # None: the line could not be read as a row
    problem: str = ""


def _parquet(path: Path) -> Iterator[_Raw]:
    pq = require("pyarrow.parquet", "batch")
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"{path} has no column {', '.join(missing)} (a batch input needs {', '.join(COLUMNS)})"
        )
    for i, values in enumerate(table.to_pylist()):
        yield _Raw(i, values)


def _jsonl(path: Path) -> Iterator[_Raw]:
    with path.open("rb") as f:
        row = 0
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _Raw(row, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
                row += 1
                continue
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _Raw(row, None, f"not a JSON object: {exc.msg} ({line.strip()!r:.60})")
            else:
                if isinstance(values, dict):
                    yield _Raw(row, values)
                else:
                    yield _Raw(row, None, f"not a JSON object: {line.strip()!r:.60}")
            row += 1


def _trec(path: Path, beir: Path) -> Iterator[_Raw]:
    """A TREC run's lines as rows: texts from the BEIR corpus (``title. text``, as ``eval`` reads
    it) and queries, the run's score as the retrieval score, each query's lines best first."""
    from rerankers_plugins.eval.beir import read_corpus, read_queries

    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (beir / name).is_file():
            raise ConfigError(f"{beir} is not a BEIR directory: {name} is missing")
    corpus = {c.id: c for c in read_corpus(beir / "corpus.jsonl")}
    queries = read_queries(beir / "queries.jsonl")
    lines: list[tuple[str, float, int, int, str]] = []
    bad: list[_Raw] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 6:
                raise ValueError(f"{len(fields)} fields")
            qid, _, doc, rank, score, _ = fields
            lines.append((qid, -float(score), int(rank), number, doc))
        except ValueError as exc:
            bad.append(_Raw(number, None, f"not a TREC run line (qid Q0 docid rank score tag): {exc}"))
    order = {q: i for i, (q, *_) in reversed(list(enumerate(lines)))}
    # each query's lines together (queries in order of first appearance), best first
    for qid, neg, _, number, doc in sorted(lines, key=lambda x: (order[x[0]], x[1], x[2], x[3])):
        cand = corpus.get(doc)
        yield _Raw(
            number,
            {
                "query_id": qid,
                "query": queries.get(qid),
                "doc_id": doc,
                "text": None if cand is None else cand.text,
                "retrieval_score": -neg,
            },
            "" if qid in queries and cand is not None else _missing(qid in queries, cand is not None, beir),
        )
    yield from bad


def _missing(query_known: bool, doc_known: bool, beir: Path) -> str:
    return "query_id not in queries.jsonl" if not query_known else f"doc_id not in {beir / 'corpus.jsonl'}"


def _raw_rows(path: Path, beir: Path | None) -> Iterator[_Raw]:
    if not path.exists():
        raise ConfigError(f"batch input {path} does not exist")
    if beir is not None:
        return _trec(path, beir)
    name = path.name.lower()
    if path.is_dir() or name.endswith(".parquet"):
        return _parquet(path)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl(path)
    if name.endswith((".trec", ".run", ".tsv", ".txt")):
        raise ConfigError(
            f"{path} looks like a TREC run: pass the BEIR directory its ids come from (--beir DIR)"
        )
    raise ConfigError(
        f"cannot tell the format of {path}: use .parquet (or a folder of them), .jsonl, or a TREC run with --beir"
    )


# -- checking --------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _checked(raw: _Raw) -> tuple[Row | None, BadRow | None]:
    values = raw.values
    if values is None:
        return None, BadRow(raw.row, None, None, raw.problem)
    qid, doc = _text(values.get("query_id")), _text(values.get("doc_id"))
    qid = qid.strip() if qid is not None else None
    doc = doc.strip() if doc is not None else None

    def bad(reason: str) -> tuple[None, BadRow]:
        return None, BadRow(raw.row, qid or None, doc or None, reason)

    if raw.problem:
        return bad(raw.problem)
    if not qid:
        return bad("no query_id")
    if not doc:
        return bad("no doc_id")
    for what, value in (("query_id", qid), ("doc_id", doc)):
        if any(c.isspace() for c in value):
            return bad(f"{what} {value!r} holds whitespace, which a TREC run cannot")
    query = values.get("query")
    if not isinstance(query, str) or not query.strip():
        return bad("the query has no text")
    text = values.get("text")
    if not isinstance(text, str):
        return bad(f"text is {type(text).__name__}, not a string")
    if not text.strip():
        return bad("empty text")
    for what, value in (("query_id", qid), ("doc_id", doc), ("query", query), ("text", text)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return bad(f"{what} is not valid Unicode (a lone surrogate)")
    score = values.get("retrieval_score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not _finite(score):
            return bad(f"retrieval_score {str(score)[:40]} is not a finite number")
        score = float(score)
    extra = {k: v for k, v in values.items() if k not in (*COLUMNS, "retrieval_score")}
    return Row(raw.row, qid, query, doc, text, score, extra), None


def read_input(path: str | Path, beir: str | Path | None = None) -> JobInput:
    """Read and check a job's input: a parquet file (or folder of them), a JSON Lines file, or a
    TREC run with the BEIR directory ``beir`` its ids come from. ConfigError for an input that cannot
    be read at all; a row that cannot be used is kept as a :class:`BadRow`, with its reason."""
    source = Path(path)
    digest = hashlib.sha256()
    groups: dict[str, list[Row]] = {}
    bad: dict[str, list[BadRow]] = {}
    order: list[str] = []
    orphans: list[BadRow] = []
    first: dict[str, Row] = {}
    seen: dict[tuple[str, str], int] = {}
    for raw in _raw_rows(source, None if beir is None else Path(beir)):
        digest.update(json.dumps([raw.row, raw.values, raw.problem], sort_keys=True, default=str).encode())
        digest.update(b"\n")
        row, problem = _checked(raw)
        qid = row.query_id if row is not None else (problem.query_id if problem is not None else None)
        if qid is None:
            assert problem is not None
            orphans.append(problem)
            continue
        if qid not in groups:
            groups[qid], bad[qid] = [], []
            order.append(qid)
        if row is not None:
            lead = first.setdefault(qid, row)
            if row.query != lead.query:
                problem = BadRow(
                    row.row, qid, row.doc_id, f"another query text than row {lead.row} has for this query_id"
                )
            elif (qid, row.doc_id) in seen:
                problem = BadRow(
                    row.row,
                    qid,
                    row.doc_id,
                    f"candidate listed twice for this query (first at row {seen[qid, row.doc_id]})",
                )
            else:
                seen[qid, row.doc_id] = row.row
                groups[qid].append(row)
                continue
        assert problem is not None
        bad[qid].append(problem)
    queries = tuple(
        QueryRows(q, first[q].query if q in first else "", tuple(groups[q]), tuple(bad[q])) for q in order
    )
    return JobInput(str(source), digest.hexdigest(), queries, tuple(orphans))
