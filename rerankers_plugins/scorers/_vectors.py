"""The document-vector cache of the scorers that encode documents without the query (bi-encoder,
ColBERT, poly-encoder): in memory, and optionally on disk, keyed by the checkpoint's weights digest and the
settings that change the stored vectors, so a checkpoint retrained in place never gets the old ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = [
    "CacheDType",
    "DocumentEmbeddingCache",
    "check_cache_dtype",
    "load_settings",
    "model_key",
    "resolve_cache_dtype",
]

logger = logging.getLogger(__name__)

CacheDType = Literal["float16", "float32"]


def model_key(root: Path | str, digest: str, *settings: Any, prefix: str = "") -> str:
    """The :class:`DocumentEmbeddingCache` key of a checkpoint: its resolved path (or Hub id), its
    digest (:func:`~rerankers_plugins.scorers._hf.checkpoint_digest`) and the settings that change
    the stored vectors (JSON; other values by ``repr``)."""
    where = str(root.resolve()) if isinstance(root, Path) else root
    identity = json.dumps([where, digest, *settings], default=repr, sort_keys=True)
    return prefix + hashlib.sha256(identity.encode()).hexdigest()[:16]


def check_cache_dtype(value: Any) -> None:
    """ConfigError unless ``cache_dtype=`` is ``"auto"``, ``"float16"`` or ``"float32"``."""
    if value not in ("auto", "float16", "float32"):
        raise ConfigError(f"cache_dtype must be 'auto', 'float16' or 'float32', got {value!r}")


def resolve_cache_dtype(value: str, dtype: Any) -> CacheDType:
    """``cache_dtype="auto"`` -> float32 where the encoder computes in float32 (cached vectors are
    then exactly the fresh ones), float16 where it computes in bfloat16 / float16 (whose values
    float16 already holds, in half the memory); an explicit choice unchanged."""
    check_cache_dtype(value)
    if value == "auto":
        return "float32" if dtype == require("torch", "colbert").float32 else "float16"
    return value  # type: ignore[return-value]


def load_settings(options: Any) -> list[Any]:
    """The load options that change what a checkpoint computes (``model_kwargs``,
    ``tokenizer_kwargs``, ``config_kwargs``, the revision), as extra :func:`model_key` settings;
    none when none is set, so the keys of default loads stay what they were."""
    chosen = {
        name: dict(getattr(options, name))
        for name in ("model_kwargs", "tokenizer_kwargs", "config_kwargs")
        if getattr(options, name, None)
    }
    if getattr(options, "revision", None) is not None:
        chosen["revision"] = options.revision
    return [chosen] if chosen else []


class DocumentEmbeddingCache:
    """Document token vectors keyed by the hash of their text, for one model.

    In memory: an LRU bounded by ``max_bytes``. On disk (optional): one ``.npy`` file per document
    under ``directory/<model key>/``, written atomically (temporary file, then rename), so another
    process opening the same directory sees complete arrays or none. Vectors are stored as
    ``dtype`` (``"float16"``: half the memory and disk, MaxSim sums move by about 1e-3;
    ``"float32"``: exactly the encoder's vectors) and scored in float32.
    """

    def __init__(
        self,
        model_key: str,
        *,
        max_bytes: int = 512 * 2**20,
        directory: str | Path | None = None,
        dtype: CacheDType = "float16",
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"cache dtype must be 'float16' or 'float32', got {dtype!r}")
        self.model_key = model_key
        self.max_bytes = max_bytes
        self.dtype: CacheDType = dtype
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.directory: Path | None = None
        if directory is not None:
            self.directory = self._open(Path(directory).expanduser() / model_key)

    @staticmethod
    def _open(path: Path) -> Path:
        created = [p for p in (path.parent, path) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
                pass
        except OSError as exc:
            for p in reversed(created):
                try:
                    p.rmdir()
                except OSError:
                    logger.debug("could not remove %s after a failed cache set-up", p)
            raise ConfigError(f"document cache directory {path} is not writable: {exc}") from exc
        return path

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item
        if self.directory is not None:
            path = self._path(key)
            if path.is_file():
                np = require("numpy", "colbert")
                torch = require("torch", "colbert")
                item = self._remember(key, torch.from_numpy(np.load(path)))
                with self._lock:
                    self.hits += 1
                return item
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, vectors: Any) -> Any:
        """Store ``[n, dim]`` vectors (converted to the cache dtype on CPU); returns what was stored."""
        # a copy of its own: a row of a batch would otherwise keep the whole batch alive in the LRU
        item = (
            vectors.detach()
            .to("cpu", dtype=getattr(require("torch", "colbert"), self.dtype))
            .contiguous()
            .clone()
        )
        if self.directory is not None:
            path = self._path(key)
            if not path.is_file():
                np = require("numpy", "colbert")
                path.parent.mkdir(exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
                try:
                    with os.fdopen(fd, "wb") as f:
                        np.save(f, item.numpy())
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        return self._remember(key, item)

    def lookup(self, texts: Sequence[str]) -> tuple[list[str], dict[str, Any], dict[str, str]]:
        """Each text's key, the stored vectors found (by key), and the texts missing (by key, each
        once): what :meth:`fetch` does before it encodes."""
        keys = [self.key(t) for t in texts]
        found: dict[str, Any] = {}
        for k in dict.fromkeys(keys):
            v = self.get(k)
            if v is not None:
                found[k] = v
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        return keys, found, missing

    def complete(
        self, keys: Sequence[str], found: dict[str, Any], missing: Sequence[str], vectors: Sequence[Any]
    ) -> list[Any]:
        """Store the ``vectors`` encoded for the ``missing`` keys; the stored vectors of every key."""
        for k, vecs in zip(missing, vectors, strict=True):
            found[k] = self.put(k, vecs)
        return [found[k] for k in keys]

    def fetch(self, texts: Sequence[str], encode: Callable[[list[str]], list[Any]]) -> list[Any]:
        """The stored vectors of each text (one per text, in order), encoding the missing ones once
        with ``encode`` and storing them: a fresh and a cached call return the same stored arrays."""
        keys, found, missing = self.lookup(texts)
        vectors = encode(list(missing.values())) if missing else []
        return self.complete(keys, found, list(missing), vectors)

    def fill(self, texts: Sequence[str], encode: Callable[[list[str]], list[Any]], *, chunk: int) -> int:
        """Encode and store every non-empty text not stored yet, ``chunk`` texts at a time (a
        corpus of any size never sits in memory at once); returns how many were encoded."""
        encoded = 0
        unique = [t for t in dict.fromkeys(texts) if t.strip()]
        for start in range(0, len(unique), chunk):
            todo = [t for t in unique[start : start + chunk] if self.get(self.key(t)) is None]
            for t, vecs in zip(todo, encode(todo), strict=True):
                self.put(self.key(t), vecs)
            encoded += len(todo)
        return encoded

    def _remember(self, key: str, item: Any) -> Any:
        """Store ``item`` unless ``key`` is stored already (another thread encoded it too); returns
        the stored one, so every caller scores the same array."""
        size = int(item.numel() * item.element_size())
        with self._lock:
            if key in self._items:
                stored = self._items[key]
                self._items.move_to_end(key)
                return stored
            self._items[key] = item
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= int(old.numel() * old.element_size())
        return item

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
