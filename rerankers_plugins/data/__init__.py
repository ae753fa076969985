"""The demo collection shipped with the package: 40 passages on varied topics, in BEIR format, with
20 test queries (graded judgments) and 20 train queries. ``rerankers-plugins demo | eval --demo |
tune --demo | train --demo``, the docs and the notebooks read it; it needs nothing outside the
package."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from rerankers_plugins.types import Candidate

__all__ = ["demo_data_dir", "load_demo_corpus"]


def demo_data_dir() -> str:
    """The demo evaluation collection shipped with the package, in BEIR format: the 40-passage demo
    corpus, 20 test queries with graded judgments (``qrels/test.tsv``) and 20 other queries for
    training (``qrels/train.tsv``; ``rerankers-plugins train --demo``). ``rerankers-plugins eval --demo``
    and the evaluation notebook use it; it needs nothing outside the package."""
    return str(resources.files("rerankers_plugins.data").joinpath("demo_beir"))


def load_demo_corpus() -> list[Candidate]:
    """The demo corpus shipped with the package: a few dozen passages on varied topics."""
    text = (Path(demo_data_dir()) / "corpus.jsonl").read_text("utf-8")
    docs = []
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            docs.append(
                Candidate(
                    text=f"{row['title']}. {row['text']}", id=row["_id"], metadata={"title": row["title"]}
                )
            )
    return docs
