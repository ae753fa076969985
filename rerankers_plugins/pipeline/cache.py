"""CachedScorer: memoise (scorer, query, document) -> score, in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLeaf, as_scorer_leaf
from rerankers_plugins.scorers.base import BaseScorer, Scorer

__all__ = ["CachedScorer", "scorer_fingerprint"]

logger = logging.getLogger(__name__)


def scorer_fingerprint(leaf: ScorerLeaf) -> dict[str, Any]:
    """What identifies a leaf scorer's scores: its class, name, scale and ``fingerprint()`` settings
    (model, activation, dtype, ... for the built-in backends)."""
    cls = type(leaf.leaf)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": leaf.name,
        "scale": str(leaf.scale),
        "settings": leaf.fingerprint(),
    }


def _digest(value: Any) -> str:
    """sha256 of a structured (JSON) encoding: no separator in a query or text can collide."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class CachedScorer(BaseScorer):
    """Wrap a leaf scorer so a (query, document) pair already seen costs no model call.

    Only leaves are cached: a score that is a pure function of (query, text) and the scorer's
    settings. Strategies (their result depends on the whole list), rankers and scorers marked
    ``pure = False`` (BM25 over the candidate list) are refused: wrap the leaf inside them,
    e.g. ``Threshold(CachedScorer(ce), absolute=0.5)``. The key hashes a structured encoding of
    the scorer's identity (class, name, scale, settings such as model, activation, dtype, the
    document template), the query and the text the scorer reads: with a ``document_template`` that
    is the filled template, so the metadata it names is part of the key, and other metadata is not.

    The in-memory LRU holds ``max_entries``; ``path`` adds a SQLite file shared across processes.
    A store that cannot be opened, is locked or unwritable degrades to memory only, with one
    warning; scores just computed are kept. Thread-safe (one lock, never held across a model
    call) and async-safe (misses go through the wrapped scorer's async path). ``hits`` /
    ``misses`` count pairs. ``on_error`` is the wrapped scorer's: a failure is never cached.
    ``timeout``: seconds to wait for another process's lock on the store before degrading.

    Pickles and deep-copies (alone or inside a strategy or an adapter) as its settings, the wrapped
    scorer, the file path and the in-memory entries; the copy opens its own connection to the same
    file, so both share what either stores there.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_entries: int = 100_000,
        path: str | Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._leaf = as_scorer_leaf(scorer, "CachedScorer")
        if not self._leaf.pure:
            raise ConfigError(
                f"CachedScorer: {self._leaf.name!r} is not a pure function of (query, text) "
                "(its scores depend on the other candidates), so its scores cannot be cached"
            )
        self.max_entries = as_int(max_entries, "max_entries", minimum=1) or 1
        self.scorer = scorer
        self.scale = self._leaf.scale
        self.name = self._leaf.name
        self.on_error = self._leaf.on_error
        # the wrapped scorer's template: the leaf around this one renders, the texts arrive filled
        self.document_template = self._leaf.template
        self.identity = scorer_fingerprint(self._leaf)
        self._scorer_key = _digest(self.identity)
        self.hits = 0
        self.misses = 0
        self._memory: OrderedDict[str, float] = OrderedDict()
        self.timeout = float(timeout)
        self.path = None if path is None else Path(path).expanduser()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = self._open()

    def _open(self) -> sqlite3.Connection | None:
        """The SQLite store at ``path`` (None without one, or when it cannot be opened: memory only).

        One connection per cache, used from any thread (``check_same_thread=False``), every use
        under the lock; other processes (and copies of this cache) open connections of their own.
        """
        if self.path is None:
            return None
        db = None
        try:
            db = sqlite3.connect(
                str(self.path), timeout=self.timeout, check_same_thread=False, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL NOT NULL)")
        except sqlite3.Error as exc:
            self._db = db
            self._degrade(exc)
            return None
        return db

    def __getstate__(self) -> dict[str, Any]:
        """Settings, the wrapped scorer, the file path and the in-memory entries; the lock and the
        SQLite connection belong to one object and are made again on the copy (which opens its
        own connection to the same file)."""
        with self._lock:
            state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_db")}
            state["_memory"] = OrderedDict(self._memory)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._db = self._open()

    def close(self) -> None:
        """Close the SQLite connection (memory only from now on)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def fingerprint(self) -> Mapping[str, Any]:
        return self.identity["settings"]  # type: ignore[no-any-return]

    def _degrade(self, exc: sqlite3.Error) -> None:
        """Memory only from now on (called with the lock held, or from __init__)."""
        logger.warning(
            "CachedScorer: the cache file %s cannot be used (%s); caching in memory only from now on",
            self.path,
            exc,
        )
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:  # already broken: nothing more to release
                logger.debug("CachedScorer: closing the broken cache file failed", exc_info=True)

    def key(self, query: str, text: str) -> str:
        return _digest([self._scorer_key, query, text])

    def _from_store(self, db: sqlite3.Connection, rest: list[str], found: dict[str, float]) -> None:
        """``rest`` looked up in the SQLite store into ``found`` (called with the lock held)."""
        try:
            for i in range(0, len(rest), 500):
                chunk = rest[i : i + 500]
                rows = db.execute(
                    f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update({k: float(v) for k, v in rows})
        except sqlite3.Error as exc:
            self._degrade(exc)

    def _lookup(self, keys: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        with self._lock:
            for k in keys:
                if k in self._memory:
                    self._memory.move_to_end(k)
                    found[k] = self._memory[k]
            rest = [k for k in dict.fromkeys(keys) if k not in found]
            if rest and self._db is not None:
                self._from_store(self._db, rest, found)
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
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO scores (key, score) VALUES (?, ?)", list(pairs.items())
                    )
                except sqlite3.Error as exc:
                    self._degrade(exc)

    def _plan(self, query: str, texts: Sequence[str]) -> tuple[list[str], dict[str, float], dict[str, str]]:
        keys = [self.key(query, t) for t in texts]
        found = self._lookup(keys)
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        return keys, found, todo

    def _merge(
        self, keys: list[str], found: dict[str, float], todo: dict[str, str], values: list[float]
    ) -> list[float]:
        fresh = dict(zip(todo, values, strict=True))
        self._store(fresh)
        found.update(fresh)
        return [found[k] for k in keys]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        keys, found, todo = self._plan(query, texts)
        values = self._leaf.score_texts(query, list(todo.values())).values if todo else []
        return self._merge(keys, found, todo, values)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        keys, found, todo = self._plan(query, texts)
        values = (await self._leaf.ascore_texts(query, list(todo.values()))).values if todo else []
        return self._merge(keys, found, todo, values)

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()
            if self._db is not None:
                try:
                    self._db.execute("DELETE FROM scores")
                except sqlite3.Error as exc:
                    self._degrade(exc)
