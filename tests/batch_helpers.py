"""What the batch tests share: a scorer that fails on a marked text (registered by name, so a job's
spec can name it), inputs written from the packaged demo collection, and reading a job's output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankers_plugins.batch import read_rows
from rerankers_plugins.scorers.fake import FakeScorer

POISON = "POISON"


class PoisonScorer(FakeScorer):
    """FakeScorer's token overlap, but a RuntimeError for any call holding a text with POISON."""

    calls: dict[str, int] = {}  # noqa: RUF012 - counted across instances: a job builds its own

    def __init__(self, name: str = "poison") -> None:
        super().__init__(name)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        PoisonScorer.calls[self.name] = PoisonScorer.calls.get(self.name, 0) + 1
        if any(POISON in t for t in texts):
            raise RuntimeError("the model refused a poisoned text")
        return super().score(query, texts)


def demo_rows(k: int = 10, queries: int | None = None) -> list[dict[str, Any]]:
    """BM25's top ``k`` of the packaged demo collection's queries, as batch input rows."""
    from rerankers_plugins.data import demo_data_dir
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever

    data = load_beir(demo_data_dir())
    bm25 = BM25Retriever(data.corpus)
    out = []
    for qid in sorted(data.queries)[:queries]:
        for c in bm25.retrieve(data.queries[qid], k):
            out.append(
                {
                    "query_id": qid,
                    "query": data.queries[qid],
                    "doc_id": c.id,
                    "text": c.text,
                    "retrieval_score": c.retrieval_score,
                }
            )
    return out


def write_jsonl(path: Path, rows: Sequence[Any]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def output_of(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every rows record and every errors record of a job's shards, in shard order."""
    rows = [r for p in sorted((directory / "rows").glob("shard-*")) for r in read_rows(p)]
    errors = [r for p in sorted((directory / "errors").glob("shard-*")) for r in read_rows(p)]
    return rows, errors
