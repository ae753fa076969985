"""Load BEIR-format data: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import Candidate

__all__ = ["BeirData", "load_beir", "read_corpus", "read_qrels", "read_queries"]


@dataclass(frozen=True)
class BeirData:
    """A BEIR dataset: ``corpus`` as Candidates (text is ``title. text``), ``queries`` id -> text,
    ``qrels`` query id -> {doc id: grade}, restricted to the queries of the split."""

    corpus: list[Candidate]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    #: every query id of ``queries.jsonl``, judged in this split or not (a run may name any of them)
    query_ids: frozenset[str] = frozenset()


def load_beir(directory: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR directory; only queries with judgments in ``qrels/<split>.tsv`` are kept."""
    root = Path(directory)
    paths = {
        "corpus": root / "corpus.jsonl",
        "queries": root / "queries.jsonl",
        "qrels": root / "qrels" / f"{split}.tsv",
    }
    for name, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"{root} is not a BEIR directory: {name} file {path} is missing")
    corpus = read_corpus(paths["corpus"])
    qrels = read_qrels(paths["qrels"])
    every = read_queries(paths["queries"])
    queries = {q: text for q, text in every.items() if q in qrels}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels, query_ids=frozenset(every))


def read_corpus(path: str | Path) -> list[Candidate]:
    """A ``corpus.jsonl`` file as Candidates: text ``title. text`` (``text`` alone without a title),
    id ``_id``, the title in metadata."""
    corpus = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                title = (row.get("title") or "").strip()
                text = row.get("text") or ""
                corpus.append(
                    Candidate(
                        text=f"{title}. {text}" if title else text,
                        id=str(row["_id"]),
                        metadata={"title": title},
                    )
                )
    return corpus


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """A ``qrels/<split>.tsv`` file: query id -> {doc id: grade} (a ``query-id`` header is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t")):
            if i == 0 and row and row[0] == "query-id":
                continue
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def read_queries(path: str | Path) -> dict[str, str]:
    """Every query of a ``queries.jsonl`` file: id -> text."""
    queries: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                queries[str(row["_id"])] = row["text"]
    return queries
