"""ColBERT late-interaction reranking (MaxSim) with a document-embedding cache.

Query and documents are encoded separately into one vector per token; a document's score is the
MaxSim of the query's vectors against its own (see :mod:`rerankers_plugins.ops.maxsim`). Document
vectors do not depend on the query, so they are computed once and reused: reranking cached
candidates costs one query encoding plus a matrix product.

Three checkpoint layouts load from a local directory (or a Hub id, fetched by huggingface_hub),
each encoded as its reference library encodes it:

``colbert``  the colbert-ai layout (colbert-ir/colbertv2.0): a BERT encoder whose weights file also
             holds ``linear.weight``, the projection (no bias, no activation); settings in
             ``artifact.metadata``: ``query_token_id`` / ``doc_token_id`` markers (default
             ``[unused0]`` / ``[unused1]``), ``query_maxlen`` (queries always padded with
             ``[MASK]`` to it, attended when ``attend_to_mask_tokens``), ``doc_maxlen``,
             ``mask_punctuation`` (punctuation dropped from documents), ``similarity`` (only
             ``"cosine"`` is accepted). Rules of colbert-ai's ``colbert/modeling/colbert.py`` and
             ``colbert/modeling/tokenization/{query,doc}_tokenization.py``. Detected by
             ``artifact.metadata`` or ``"HF_ColBERT"`` in config.json's architectures.
``pylate``   the sentence-transformers layout written by PyLate: the encoder at the root, one or more
             ``Dense`` modules in their own folders, applied in ``modules.json`` order (each with
             its ``bias``, ``activation_function`` and ``use_residual`` from its config.json, as
             sentence-transformers' ``Dense`` applies them); ``query_prefix`` / ``document_prefix``
             tokens (default ``[Q] `` / ``[D] ``), ``query_length``, ``document_length``,
             ``do_query_expansion``, ``attend_to_expansion_tokens`` and ``skiplist_words``
             (default: punctuation) in ``config_sentence_transformers.json``. Rules of PyLate's
             ``pylate/models/colbert.py``.

             A directory with both sets of files (answerai-colbert-small-v1: ``artifact.metadata``
             and ``linear.weight`` beside ``modules.json`` and ``1_Dense/``) is read as this layout:
             PyLate and sentence-transformers' ``MultiVectorEncoder`` both load such a directory
             through its ``modules.json``, with the Dense modules, prefixes and lengths of the
             sentence-transformers files, and never read ``artifact.metadata`` or the root
             ``linear.weight``. We do the same, so all three score it alike.
``plain``    any other transformers / sentence-transformers encoder: its L2-normalised token
             embeddings without projection, special and padding tokens removed. Measured on
             SciFact, BM25 top-100 reranked this way with all-MiniLM-L6-v2 beats both BM25 and the
             same model's cosine (README, Benchmarks).

Lengths count every token (``[CLS]``, the marker, ``[SEP]`` and query padding included). The
constructor's ``query_length`` / ``doc_length`` win over the checkpoint's declared lengths; where
neither exists the fallbacks are PyLate's defaults, 32 and 180 (plain encoders, which declare
nothing: 32 and 300, the settings of the README benchmark).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import string
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.ops.batching import length_sorted_batches
from rerankers_plugins.ops.maxsim import maxsim, pad_vectors
from rerankers_plugins.scorers._hf import (
    DTypeName,
    TruncationReport,
    load_model,
    pad_right,
    resolve_device,
    resolve_dtype,
    resolve_max_batch_tokens,
    resolve_model,
)
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import ScoreScale

__all__ = ["ColBERTScorer", "DocumentEmbeddingCache", "Layout", "detect_layout"]

logger = logging.getLogger(__name__)

Layout = Literal["colbert", "pylate", "plain"]
CacheDType = Literal["float16", "float32"]

#: PyLate's defaults where neither the constructor nor the checkpoint gives a length
DEFAULT_QUERY_LENGTH = 32
DEFAULT_DOC_LENGTH = 180
#: plain encoders declare no lengths; 300 is what the README benchmark measured
PLAIN_DOC_LENGTH = 300
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{what}: cannot read {path}: {exc}") from exc


def _dense_entries(root: Path) -> list[dict[str, Any]]:
    """The ``Dense`` modules listed in ``modules.json`` (empty when there is no such file)."""
    modules = root / "modules.json"
    if not modules.is_file():
        return []
    entries = _read_json(modules, "modules.json")
    if not isinstance(entries, list):
        raise BackendError(f"{modules}: expected a list of modules, got {type(entries).__name__}")
    return [e for e in entries if isinstance(e, dict) and str(e.get("type", "")).endswith("Dense")]


def detect_layout(directory: str | Path) -> Layout:
    """Which of the three checkpoint layouts a local directory holds (see the module docstring).

    ``modules.json`` listing a ``Dense`` module wins over ``artifact.metadata``: a directory holding
    both (answerai-colbert-small-v1) is loaded through its sentence-transformers files by PyLate and
    sentence-transformers alike, so it is the ``pylate`` layout.
    """
    root = Path(directory)
    if _dense_entries(root):
        return "pylate"
    if (root / "artifact.metadata").is_file():
        return "colbert"
    config = root / "config.json"
    if config.is_file():
        archs = _read_json(config, "config.json").get("architectures") or []
        if any("ColBERT" in a for a in archs):
            return "colbert"
    return "plain"


def _load_state(directory: Path, what: str) -> dict[str, Any]:
    """Tensors from ``model.safetensors`` or ``pytorch_model.bin`` in ``directory``."""
    torch = require("torch", "colbert")
    for name in _WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                st = require("safetensors.torch", "colbert")
                return dict(st.load_file(str(path)))
            return dict(torch.load(str(path), map_location="cpu", weights_only=True))
    raise BackendError(
        f"{what}: no weights file in {directory} (expected {' or '.join(str(directory / n) for n in _WEIGHT_FILES)})"
    )


@dataclass
class _Dense:
    """One sentence-transformers ``Dense`` module: ``activation(linear(x)) (+ residual(x))``."""

    linear: Any  # torch.nn.Linear
    activation: Any  # torch.nn.Module
    residual: Any | None = None  # torch.nn.Linear, or None for an identity residual / none
    use_residual: bool = False

    def __call__(self, x: Any) -> Any:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out

    def to(self, device: str, dtype: Any) -> _Dense:
        self.linear = self.linear.to(device, dtype=dtype).eval()
        self.activation = self.activation.to(device, dtype=dtype).eval()
        if self.residual is not None:
            self.residual = self.residual.to(device, dtype=dtype).eval()
        return self


@dataclass
class _Spec:
    """How to turn text into token vectors for one checkpoint layout."""

    layout: Layout
    projection: list[_Dense] = field(default_factory=list)  # applied in order
    query_marker: list[int] = field(default_factory=list)
    doc_marker: list[int] = field(default_factory=list)
    expand_query: bool = False
    attend_expansion: bool = False
    keep_special: bool = True
    doc_skip_ids: frozenset[int] = frozenset()
    query_length: int | None = None  # as declared by the checkpoint
    doc_length: int | None = None
    source: str = ""  # where the settings came from, for messages


def _marker_ids(tokenizer: Any, marker: str, where: str) -> list[int]:
    """The one token id of a marker (PyLate and colbert-ai insert it as a single token)."""
    if marker == "":
        return []  # PyLate: an empty prefix adds no token
    for candidate in (marker, marker.strip()):
        tid = tokenizer.convert_tokens_to_ids(candidate)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            return [tid]
    raise BackendError(
        f"{where}: the marker {marker!r} is not a token of the checkpoint's tokenizer; the reference "
        "implementations insert it as one token id (PyLate would add a new, untrained embedding for it)"
    )


def _skip_ids(tokenizer: Any, words: Sequence[str]) -> frozenset[int]:
    """Token ids of skiplist words (``convert_tokens_to_ids``, as PyLate and sentence-transformers
    resolve them); a word that is not one vocabulary token is left out rather than skipping every
    real ``[UNK]`` of a document (sentence-transformers' rule; no such word on BERT or ModernBERT
    vocabularies for the default punctuation list)."""
    ids = set()
    for word in words:
        tid = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tid, int) and (tid != tokenizer.unk_token_id or word == tokenizer.unk_token):
            ids.add(tid)
    return frozenset(ids)


def _linear(weight: Any, bias: Any | None) -> Any:
    torch = require("torch", "colbert")
    layer = torch.nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.eval()


def _positive_int(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackendError(f"{where}: {key} must be a positive int, got {value!r}")
    return value


def _colbert_spec(root: Path, tokenizer: Any) -> _Spec:
    meta: dict[str, Any] = {}
    where = f"ColBERT checkpoint {root}"
    if (root / "artifact.metadata").is_file():
        meta = _read_json(root / "artifact.metadata", where)
        where = str(root / "artifact.metadata")
    similarity = meta.get("similarity", "cosine")
    if similarity != "cosine":
        raise BackendError(
            f"{where}: similarity {similarity!r} is not supported; ColBERTScorer scores cosine MaxSim only"
        )
    state = _load_state(root, "ColBERT checkpoint")
    if "linear.weight" not in state:
        files = " / ".join(n for n in _WEIGHT_FILES if (root / n).is_file())
        raise BackendError(
            f"ColBERT checkpoint {root}: the projection `linear.weight` is missing from {files}; "
            "a ColBERT checkpoint stores its 128-d projection next to the encoder weights"
        )
    identity = require("torch", "colbert").nn.Identity()
    return _Spec(
        layout="colbert",
        # colbert-ai's projection is Linear(hidden, dim, bias=False): a stray bias is not applied
        projection=[_Dense(_linear(state["linear.weight"], None), identity)],
        query_marker=_marker_ids(tokenizer, meta.get("query_token_id") or "[unused0]", where),
        doc_marker=_marker_ids(tokenizer, meta.get("doc_token_id") or "[unused1]", where),
        expand_query=True,  # colbert-ai always pads queries with [MASK] to query_maxlen
        attend_expansion=bool(meta.get("attend_to_mask_tokens", False)),
        doc_skip_ids=_skip_ids(tokenizer, string.punctuation)
        if meta.get("mask_punctuation", True)
        else frozenset(),
        query_length=_positive_int(meta.get("query_maxlen"), "query_maxlen", where),
        doc_length=_positive_int(meta.get("doc_maxlen"), "doc_maxlen", where),
        source=where,
    )


#: modules.json entries a PyLate checkpoint may list besides its Dense modules
_PYLATE_OTHER_MODULES = ("Transformer", "Normalize")


def _activation(name: Any, module_type: str, where: str) -> Any:
    """The activation of a Dense config, instantiated as sentence-transformers / PyLate do."""
    torch = require("torch", "colbert")
    if name is None:
        # the constructors' defaults: PyLate's Dense has Identity, sentence-transformers' Tanh
        return torch.nn.Identity() if module_type.startswith("pylate.") else torch.nn.Tanh()
    if not isinstance(name, str) or not name.startswith("torch."):
        raise BackendError(
            f"{where}: activation_function {name!r} is not a torch class; custom activation code is "
            "not run (sentence-transformers needs trust_remote_code for it)"
        )
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"{where}: activation_function {name!r} does not exist in torch") from exc
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise BackendError(f"{where}: activation_function {name!r} is not a torch.nn.Module class")
    return cls()


def _dense_module(root: Path, entry: dict[str, Any]) -> _Dense:
    dense_dir = root / str(entry.get("path", ""))
    where = f"PyLate Dense module {dense_dir}"
    if not any((dense_dir / n).is_file() for n in _WEIGHT_FILES):
        raise BackendError(
            f"PyLate checkpoint {root}: the projection file is missing: expected "
            f"{dense_dir / _WEIGHT_FILES[0]} (or {_WEIGHT_FILES[1]}) for the Dense module listed in modules.json"
        )
    cfg_path = dense_dir / "config.json"
    cfg = _read_json(cfg_path, where) if cfg_path.is_file() else {}
    state = _load_state(dense_dir, where)
    if "linear.weight" not in state:
        raise BackendError(f"{where}: no `linear.weight` tensor in its weights file")
    weight = state["linear.weight"]
    out_f, in_f = int(weight.shape[0]), int(weight.shape[1])
    for key, actual in (("in_features", in_f), ("out_features", out_f)):
        declared = cfg.get(key)
        if declared is not None and declared != actual:
            raise BackendError(
                f"{where}: config.json declares {key}={declared} but linear.weight has {actual}"
            )
    has_bias = bool(cfg.get("bias", True))  # both Dense constructors default to a bias
    if has_bias and "linear.bias" not in state:
        raise BackendError(f"{where}: config.json declares a bias but the weights file has no `linear.bias`")
    use_residual = bool(cfg.get("use_residual", False))
    residual = None
    if use_residual and in_f != out_f:
        if "residual.weight" not in state:
            raise BackendError(f"{where}: use_residual with {in_f} != {out_f} needs `residual.weight`")
        residual = _linear(state["residual.weight"], None)
    return _Dense(
        linear=_linear(weight, state["linear.bias"] if has_bias else None),
        activation=_activation(cfg.get("activation_function"), str(entry.get("type", "")), where),
        residual=residual,
        use_residual=use_residual,
    )


def _pylate_spec(root: Path, tokenizer: Any) -> _Spec:
    entries = _read_json(root / "modules.json", "modules.json")
    entries = sorted(entries, key=lambda e: int(e.get("idx", 0)))
    unknown = [
        str(e.get("type"))
        for e in entries
        if not str(e.get("type", "")).endswith(("Dense", *_PYLATE_OTHER_MODULES))
    ]
    if unknown:
        raise BackendError(
            f"PyLate checkpoint {root}: modules.json lists {', '.join(unknown)}, which ColBERTScorer "
            "does not apply; it reads PyLate checkpoints (a Transformer followed by Dense modules)"
        )
    dense = [_dense_module(root, e) for e in entries if str(e.get("type", "")).endswith("Dense")]
    cfg_path = root / "config_sentence_transformers.json"
    where = str(cfg_path)
    cfg = _read_json(cfg_path, where) if cfg_path.is_file() else {}
    skip_words = cfg.get("skiplist_words")
    expand = cfg.get("do_query_expansion")
    expand = True if expand is None else bool(expand)
    return _Spec(
        layout="pylate",
        projection=dense,
        query_marker=_marker_ids(tokenizer, _or(cfg.get("query_prefix"), "[Q] "), where),
        doc_marker=_marker_ids(tokenizer, _or(cfg.get("document_prefix"), "[D] "), where),
        expand_query=expand,
        # PyLate: no expansion, no attending to expansion tokens
        attend_expansion=expand and bool(cfg.get("attend_to_expansion_tokens") or False),
        doc_skip_ids=_skip_ids(tokenizer, string.punctuation if skip_words is None else skip_words),
        query_length=_positive_int(cfg.get("query_length"), "query_length", where),
        doc_length=_positive_int(cfg.get("document_length"), "document_length", where),
        source=where,
    )


def _or(value: Any, default: str) -> str:
    """PyLate's fallback: None (absent) takes the default, "" stays "" (no prefix)."""
    return default if value is None else str(value)


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
        item = vectors.detach().to("cpu", dtype=getattr(require("torch", "colbert"), self.dtype)).contiguous()
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

    def fetch(self, texts: Sequence[str], encode: Callable[[list[str]], list[Any]]) -> list[Any]:
        """The stored vectors of each text (one per text, in order), encoding the missing ones once
        with ``encode`` and storing them: a fresh and a cached call return the same stored arrays."""
        keys = [self.key(t) for t in texts]
        found: dict[str, Any] = {}
        for k in dict.fromkeys(keys):
            v = self.get(k)
            if v is not None:
                found[k] = v
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if missing:
            for k, vecs in zip(missing, encode(list(missing.values())), strict=True):
                found[k] = self.put(k, vecs)
        return [found[k] for k in keys]

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


class ColBERTScorer(BaseScorer):
    """Late-interaction (MaxSim) reranking over ColBERT, PyLate or plain encoder checkpoints.

    Args:
        model: local directory or Hub id (see the module docstring for the layouts).
        device, dtype: as for :class:`~rerankers_plugins.CrossEncoderScorer` (``"auto"``: bfloat16
            where the hardware is fast at it).
        query_length: query tokens including ``[CLS]``, the marker and ``[SEP]``; longer queries are
            truncated, shorter ones padded with ``[MASK]`` where the checkpoint expands queries.
            None (default): the checkpoint's ``query_maxlen`` (colbert-ai) or ``query_length``
            (PyLate), else 32.
        doc_length: document tokens including ``[CLS]``, the marker and ``[SEP]``; longer documents
            are truncated (warned once). None (default): the checkpoint's ``doc_maxlen`` /
            ``document_length``, else 180 (300 for plain encoders). Both lengths are capped at the
            encoder's ``max_position_embeddings``.
        cache_dir: optional directory for document vectors shared across processes.
        cache_bytes: memory bound of the in-process document cache.
        cache_dtype: how cached document vectors are stored. ``"auto"`` (default): float32 when the
            encoder computes in float32, so that scores equal the reference implementation's
            (a float16 cache moves raw MaxSim sums by about 1e-3, more than the 1e-4 the scorer
            promises), and float16 when it computes in bfloat16/float16, whose vectors float16
            already holds (half the memory and disk). ``"float16"`` / ``"float32"`` force one.
        normalize: divide MaxSim by the number of query tokens, so scores are mean cosines in
            [-1, 1] (scale SIMILARITY; ranking is unchanged). ``False`` returns the raw sum, in
            [-query tokens, +query tokens], declared as an unbounded scale (LOGIT): the score
            colbert-ai and PyLate return.
        batch_size, max_batch_tokens: document encoding batches (length-sorted).
        layout: force ``"colbert"``, ``"pylate"`` or ``"plain"`` instead of detecting it.
    """

    rebuild_on_copy = True  # a copy reloads the model from its files

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: DTypeName = "auto",
        query_length: int | None = None,
        doc_length: int | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = 512 * 2**20,
        cache_dtype: Literal["auto", "float16", "float32"] = "auto",
        normalize: bool = True,
        batch_size: int = 32,
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        layout: Layout | None = None,
        local_files_only: bool = False,
    ) -> None:
        for name, value, low in (
            ("query_length", query_length, 4),
            ("doc_length", doc_length, 4),
            ("batch_size", batch_size, 1),
        ):
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if layout not in (None, "colbert", "pylate", "plain"):
            raise ConfigError(f"layout must be 'colbert', 'pylate', 'plain' or None, got {layout!r}")
        if cache_dtype not in ("auto", "float16", "float32"):
            raise ConfigError(f"cache_dtype must be 'auto', 'float16' or 'float32', got {cache_dtype!r}")
        self._torch = require("torch", "colbert")
        transformers = require("transformers", "colbert")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_tokens = resolve_max_batch_tokens(max_batch_tokens, self.device)
        self.batch_size = batch_size
        self.normalize = normalize
        self.scale = ScoreScale.SIMILARITY if normalize else ScoreScale.LOGIT
        self.name = model
        self.model_id = model
        model = resolve_model(model)

        def load() -> tuple[Path, Any, Any]:
            root = Path(model).expanduser()
            if not root.is_dir():
                hub = require("huggingface_hub", "colbert")
                root = Path(hub.snapshot_download(model, local_files_only=local_files_only))
            tok = transformers.AutoTokenizer.from_pretrained(str(root))
            hf_logging = transformers.utils.logging
            verbosity = hf_logging.get_verbosity()
            if (root / "artifact.metadata").is_file() or (layout or detect_layout(root)) == "colbert":
                # The encoder loads without `linear.weight`, which transformers reports as an
                # unexpected key; the projection is loaded separately, so the report is noise.
                hf_logging.set_verbosity_error()
            try:
                enc = transformers.AutoModel.from_pretrained(str(root))
            finally:
                hf_logging.set_verbosity(verbosity)
            return root, tok, enc

        root, self._tokenizer, encoder = load_model("ColBERT", model, load, cls="ColBERTScorer")
        # a fast tokenizer's truncation / padding settings are one mutable object that each call
        # with other settings rewrites: concurrent calls are cut at another call's length (or
        # raise "Already borrowed"), so tokenizer calls hold this lock
        self._tokenizer_lock = threading.RLock()
        self.layout: Layout = layout or detect_layout(root)
        if self.layout == "colbert":
            spec = _colbert_spec(root, self._tokenizer)
        elif self.layout == "pylate":
            if not (root / "modules.json").is_file():
                raise BackendError(f"layout='pylate' needs {root / 'modules.json'}, which does not exist")
            spec = _pylate_spec(root, self._tokenizer)
        else:
            spec = _Spec(layout="plain", keep_special=False, doc_length=None)
        self._spec = spec
        limit = int(getattr(encoder.config, "max_position_embeddings", 512) or 512)
        default_doc = PLAIN_DOC_LENGTH if self.layout == "plain" else DEFAULT_DOC_LENGTH
        self.query_length = min(_first(query_length, spec.query_length, DEFAULT_QUERY_LENGTH), limit)
        self.doc_length = min(_first(doc_length, spec.doc_length, default_doc), limit)
        self._encoder = encoder.to(self.device, dtype=self.dtype).eval()
        spec.projection = [d.to(self.device, self.dtype) for d in spec.projection]
        self.dim = int(
            spec.projection[-1].linear.out_features if spec.projection else encoder.config.hidden_size
        )
        if cache_dtype == "auto":
            cache_dtype = "float32" if self.dtype == self._torch.float32 else "float16"
        self.cache_dtype: CacheDType = cache_dtype
        self._special_ids = frozenset(int(i) for i in self._tokenizer.all_special_ids)
        self._doc_truncation = TruncationReport(f"ColBERTScorer({self.model_id!r}) documents")
        self._query_truncation = TruncationReport(
            f"ColBERTScorer({self.model_id!r}) queries", hint="Raise query_length to read longer queries."
        )
        model_key = hashlib.sha256(
            json.dumps(
                [
                    str(root.resolve()),
                    self.layout,
                    self.doc_length,
                    self.dim,
                    str(self.dtype),
                    self.cache_dtype,
                ]
            ).encode()
        ).hexdigest()[:16]
        self.cache = DocumentEmbeddingCache(
            model_key, max_bytes=cache_bytes, directory=cache_dir, dtype=self.cache_dtype
        )
        logger.debug(
            "loaded ColBERT %s layout=%s dim=%d lengths=%d/%d on %s/%s",
            model,
            self.layout,
            self.dim,
            self.query_length,
            self.doc_length,
            self.device,
            self.dtype,
        )

    def __repr__(self) -> str:
        return (
            f"ColBERTScorer({self.model_id!r}, layout={self.layout!r}, dim={self.dim}, "
            f"query_length={self.query_length}, doc_length={self.doc_length}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r})"
        )

    # -- encoding ---------------------------------------------------------------------------------

    def _ids(
        self, texts: Sequence[str], marker: list[int], limit: int, report: TruncationReport
    ) -> list[list[int]]:
        """Token ids as the reference implementations build them: the tokenizer's own special
        tokens around the text, truncated so that the whole sequence fits ``limit``, and the marker
        inserted right after the first special token (PyLate's ``insert_prefix_token``; colbert-ai
        tokenizes ``". " + text`` and overwrites position 1, the same sequence)."""
        tok = self._tokenizer
        with self._tokenizer_lock:
            template = list(tok("", add_special_tokens=True)["input_ids"])  # e.g. [CLS] [SEP]
            room = max(limit - len(template) - len(marker), 1)
            raw = report.token_ids(tok, texts, room)  # capped at room + 1: tells who is truncated
        head, tail = template[:1], template[1:]
        report.check(sum(len(ids) > room for ids in raw), len(raw), limit)
        return [head + marker + ids[:room] + tail for ids in raw]

    def _forward(self, batch_ids: list[list[int]], attend: list[list[int]] | None = None) -> Any:
        torch = self._torch
        ids, mask = pad_right(batch_ids, self._tokenizer.pad_token_id or 0, attend)
        hidden = self._encoder(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        for dense in self._spec.projection:
            hidden = dense(hidden)
        return torch.nn.functional.normalize(hidden.float(), p=2, dim=-1)

    def _keep(self, ids: list[int], *, doc: bool) -> list[int]:
        spec = self._spec
        if not spec.keep_special:
            return [i for i, t in enumerate(ids) if t not in self._special_ids]
        if doc and spec.doc_skip_ids:
            return [i for i, t in enumerate(ids) if t not in spec.doc_skip_ids]
        return list(range(len(ids)))

    def encode_query(self, query: str) -> Any:
        """``[m, dim]`` float32 query token vectors on the scorer's device."""
        spec = self._spec
        ids = self._ids([query], spec.query_marker, self.query_length, self._query_truncation)[0]
        attend = [1] * len(ids)
        if spec.expand_query and len(ids) < self.query_length:
            extra = self.query_length - len(ids)
            tok = self._tokenizer
            # PyLate's fallback chain: [MASK] for encoders, EOS for decoders
            expansion_id = tok.mask_token_id if tok.mask_token_id is not None else tok.eos_token_id
            if expansion_id is None:
                raise BackendError(
                    f"{self.model_id!r}: query expansion needs a [MASK] (or EOS) token, the tokenizer has none"
                )
            ids = ids + [expansion_id] * extra
            attend = attend + [1 if spec.attend_expansion else 0] * extra
        with self._torch.inference_mode():
            vecs = self._forward([ids], [attend])[0]
        return vecs[self._keep(ids, doc=False)]

    def encode_documents(self, texts: Sequence[str]) -> list[Any]:
        """``[n_i, dim]`` float32 token vectors for each text (no cache involved)."""
        if not texts:
            return []
        all_ids = self._ids(texts, self._spec.doc_marker, self.doc_length, self._doc_truncation)
        out: list[Any] = [None] * len(texts)
        with self._torch.inference_mode():
            for batch in length_sorted_batches(
                [len(x) for x in all_ids], self.batch_size, self.max_batch_tokens
            ):
                vecs = self._forward([all_ids[i] for i in batch])
                for row, i in enumerate(batch):
                    keep = self._keep(all_ids[i], doc=True)
                    out[i] = vecs[row, keep].detach()
        return out

    def _document_vectors(self, texts: Sequence[str]) -> list[Any]:
        return self.cache.fetch(texts, self.encode_documents)

    def index(self, texts: Sequence[str]) -> int:
        """Precompute and cache the vectors of ``texts`` (memory, and disk when ``cache_dir`` is set).

        Returns how many texts were encoded (the rest were cached already). Encodes in chunks so
        a corpus of any size never sits in memory as one padded tensor.
        """
        return self.cache.fill(texts, self.encode_documents, chunk=max(self.batch_size * 8, 256))

    # -- scoring ----------------------------------------------------------------------------------

    def fingerprint(self) -> Mapping[str, Any]:
        return {
            "model": self.name,
            "query_length": self.query_length,
            "doc_length": self.doc_length,
            "dtype": str(self.dtype),
            "cache_dtype": self.cache_dtype,
        }

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        torch = self._torch
        q = self.encode_query(query)
        nonempty = [i for i, t in enumerate(texts) if t.strip()]
        scores = [0.0] * len(texts)  # empty documents score 0
        vectors = self._document_vectors([texts[i] for i in nonempty])
        chunk = 256
        with torch.inference_mode():
            for start in range(0, len(nonempty), chunk):
                part = vectors[start : start + chunk]
                docs, mask = pad_vectors([v.to(self.device) for v in part], dim=self.dim)
                values = maxsim(q, docs, doc_mask=mask, normalize=self.normalize).tolist()
                for i, v in zip(nonempty[start : start + chunk], values, strict=True):
                    scores[i] = float(v)
        return scores


def _first(*values: int | None) -> int:
    """The first value that is not None (the constructor's, the checkpoint's, the default)."""
    for v in values:
        if v is not None:
            return v
    raise AssertionError("a default length is always given")
