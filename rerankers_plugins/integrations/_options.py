"""Framework-free pieces both adapters share: building the scorer a convenience class names."""

from __future__ import annotations

import importlib
from typing import Any

from rerankers_plugins.errors import ConfigError

__all__ = ["LOCAL_MODEL_KINDS", "build_local_scorer"]

#: convenience kind -> (scorer class, constructor options the convenience exposes as fields)
LOCAL_MODEL_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross-encoder": (
        "rerankers_plugins.scorers.cross_encoder:CrossEncoderScorer",
        ("device", "max_length", "batch_size", "dtype", "activation"),
    ),
    "bi-encoder": (
        "rerankers_plugins.scorers.bi_encoder:BiEncoderScorer",
        ("device", "max_length", "batch_size", "dtype"),
    ),
    "colbert": (
        "rerankers_plugins.scorers.colbert:ColBERTScorer",
        ("device", "batch_size", "dtype", "query_length", "doc_length", "cache_dir"),
    ),
}

_NULLABLE = {"activation"}  # None is a meaningful value for these (raw logits), not "unset"


def build_local_scorer(kind: str, data: dict[str, Any]) -> Any:
    """Build the scorer a convenience class describes with its fields (``model`` plus options)."""
    if data.get("scorer") is not None:
        raise ConfigError(f"pass either scorer=... or model=... to the {kind} convenience, not both")
    if "model" not in data:
        raise ConfigError(f"the {kind} convenience needs model= (a Hub id or a local directory)")
    target, names = LOCAL_MODEL_KINDS[kind]
    options = {k: data[k] for k in names if k in data and (data[k] is not None or k in _NULLABLE)}
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(data["model"], **options)
