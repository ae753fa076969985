"""CachedScorer: memoise (model, query, document) -> score, in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline._strategy import as_candidates, require_scores
from rerankers_plugins.pipeline.rerank import ascore_with, score_with, scorer_name
from rerankers_plugins.scorers.base import BaseScorer

__all__ = ["CachedScorer"]

logger = logging.getLogger(__name__)


class CachedScorer(BaseScorer):
    """Wrap a scorer so a (query, document) pair already seen costs no model call.

    Keys are ``(scorer name, query, sha256(document text))``: metadata plays no part, so
    unhashable metadata is fine. The in-memory LRU holds ``max_entries``; ``path`` adds a SQLite
    file shared across processes. Thread-safe (one lock, never held across a model call) and
    async-safe (misses go through the wrapped scorer's async path). ``hits`` / ``misses`` count
    pairs. Rank-only scorers are refused: an order depends on the whole list, not on one pair.
    """

    def __init__(self, scorer: Any, *, max_entries: int = 100_000, path: str | Path | None = None) -> None:
        self.scale = require_scores(scorer, "CachedScorer")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"max_entries must be a positive int, got {max_entries!r}")
        self.scorer = scorer
        self.name = scorer_name(scorer)
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._memory: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            try:
                self._db = sqlite3.connect(
                    str(Path(path).expanduser()), check_same_thread=False, isolation_level=None
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL NOT NULL)"
                )
            except sqlite3.Error as exc:
                raise ConfigError(f"CachedScorer: cannot open the cache file {path}: {exc}") from exc

    def key(self, query: str, text: str) -> str:
        return hashlib.sha256(f"{self.name}\x00{query}\x00{text}".encode()).hexdigest()

    def _lookup(self, keys: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        with self._lock:
            for k in keys:
                if k in self._memory:
                    self._memory.move_to_end(k)
                    found[k] = self._memory[k]
            rest = [k for k in dict.fromkeys(keys) if k not in found]
            if rest and self._db is not None:
                for i in range(0, len(rest), 500):
                    chunk = rest[i : i + 500]
                    rows = self._db.execute(
                        f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk
                    ).fetchall()
                    found.update({k: float(v) for k, v in rows})
            hits = sum(k in found for k in keys)
            self.hits += hits
            self.misses += len(keys) - hits
        return found

    def _store(self, pairs: dict[str, float]) -> None:
        with self._lock:
            for k, v in pairs.items():
                self._memory[k] = v
                self._memory.move_to_end(k)
            while len(self._memory) > self.max_entries:
                self._memory.popitem(last=False)
            if self._db is not None:
                self._db.executemany(
                    "INSERT OR REPLACE INTO scores (key, score) VALUES (?, ?)", list(pairs.items())
                )

    def _plan(self, query: str, texts: Sequence[str]) -> tuple[list[str], dict[str, float], dict[str, str]]:
        keys = [self.key(query, t) for t in texts]
        found = self._lookup(keys)
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        return keys, found, todo

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        keys, found, todo = self._plan(query, texts)
        if todo:
            values = score_with(self.scorer, query, as_candidates(list(todo.values()))).values
            fresh = dict(zip(todo, values, strict=True))
            self._store(fresh)
            found.update(fresh)
        return [found[k] for k in keys]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        keys, found, todo = self._plan(query, texts)
        if todo:
            values = (await ascore_with(self.scorer, query, as_candidates(list(todo.values())))).values
            fresh = dict(zip(todo, values, strict=True))
            self._store(fresh)
            found.update(fresh)
        return [found[k] for k in keys]

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()
            if self._db is not None:
                self._db.execute("DELETE FROM scores")
