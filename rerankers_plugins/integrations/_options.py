"""Framework-free pieces both adapters share: option names of the local-model conveniences."""

from __future__ import annotations

from typing import Any

__all__ = ["LOCAL_MODEL_OPTIONS", "build_local_scorer"]

#: Constructor options of CrossEncoderScorer / BiEncoderScorer that the conveniences expose as fields.
LOCAL_MODEL_OPTIONS = ("device", "max_length", "batch_size", "dtype", "activation")


def build_local_scorer(kind: str, data: dict[str, Any]) -> Any:
    """Build the scorer a convenience class describes with its fields (``model`` plus options)."""
    from rerankers_plugins.errors import ConfigError

    if data.get("scorer") is not None:
        raise ConfigError(f"pass either scorer=... or model=... to the {kind} convenience, not both")
    if "model" not in data:
        raise ConfigError(f"the {kind} convenience needs model= (a Hub id or a local directory)")
    options = {k: data[k] for k in LOCAL_MODEL_OPTIONS if data.get(k) is not None}
    if kind == "cross-encoder":
        from rerankers_plugins.scorers.cross_encoder import CrossEncoderScorer

        if "activation" in data:  # None is meaningful here: raw logits
            options["activation"] = data["activation"]
        return CrossEncoderScorer(data["model"], **options)
    from rerankers_plugins.scorers.bi_encoder import BiEncoderScorer

    options.pop("activation", None)
    return BiEncoderScorer(data["model"], **options)
