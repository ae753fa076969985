"""Checkpoint layouts of :class:`~rerankers_plugins.scorers.colbert.ColBERTScorer`: detection and loading.

``colbert`` (colbert-ai), ``pylate`` (sentence-transformers files written by PyLate) and ``plain``
(any other encoder), each read as its reference library reads it; the rules are in the docstring of
:mod:`rerankers_plugins.scorers.colbert`. :func:`load_spec` turns a directory into a :class:`_Spec`:
the Dense projection chain, the query / document markers, the document skiplist and the declared
lengths.
"""

from __future__ import annotations

import importlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError

__all__ = ["Layout", "detect_layout", "load_spec"]

Layout = Literal["colbert", "pylate", "plain"]
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


def load_spec(root: Path, tokenizer: Any, layout: Layout) -> _Spec:
    """How the checkpoint in ``root`` encodes text, read as ``layout``."""
    if layout == "colbert":
        return _colbert_spec(root, tokenizer)
    if layout == "pylate":
        if not (root / "modules.json").is_file():
            raise BackendError(f"layout='pylate' needs {root / 'modules.json'}, which does not exist")
        return _pylate_spec(root, tokenizer)
    return _Spec(layout="plain", keep_special=False, doc_length=None)
