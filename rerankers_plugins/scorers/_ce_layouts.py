"""Which layout a cross-encoder checkpoint is in, read from its files (never from its name), and
why one that cannot be scored as its authors do is refused, naming what can score it: used by
:class:`~rerankers_plugins.scorers.cross_encoder.CrossEncoderScorer` before and after loading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._causal import PROMPT_FORMATS
from rerankers_plugins.scorers._onnx import RUNTIMES

__all__ = [
    "architectures",
    "check_options",
    "logit_score_module",
    "refusal",
    "require_reranker_head",
    "st_logit_score",
]

_ACTIVATIONS = ("sigmoid", None)


def architectures(model: Any) -> list[str]:
    """``architectures`` of a local directory's config.json (``model`` a path) or of a loaded
    CrossEncoder; empty when unknown."""
    if isinstance(model, str):
        try:
            config_json = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # no readable config: the loader reports what is wrong
        return [str(a) for a in config_json.get("architectures") or []]
    config = getattr(getattr(model, "model", None), "config", None)
    return [str(a) for a in getattr(config, "architectures", None) or []]


def st_logit_score(directory: str) -> bool:
    """Whether a local directory is a sentence-transformers causal reranker (a LogitScore module)."""
    try:
        entries = json.loads((Path(directory) / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(e.get("type", "")).endswith("LogitScore") for e in entries)


_FORMATS_HINT = ", ".join(f"{name!r} ({f.source})" for name, f in PROMPT_FORMATS.items())


def refusal(model_id: str, architectures: Sequence[str]) -> str | None:
    """Why a checkpoint with these architectures cannot be scored as a cross-encoder, naming what can;
    None when it can (a sequence-classification head)."""
    if not architectures or any(a.endswith("ForSequenceClassification") for a in architectures):
        return None
    archs = ", ".join(architectures)
    if any(a.endswith("ForCausalLM") for a in architectures):
        return (
            f"{model_id!r} is a causal language model ({archs}) without sentence-transformers' LogitScore "
            "module, so how its prompt is written is not in its files. If it is a yes/no reranker, name "
            f"its published prompt: CrossEncoderScorer({model_id!r}, prompt_format=...), one of {_FORMATS_HINT}. "
            "A general chat model reranks through LLMPointwiseScorer or LLMListwiseRanker."
        )
    if any(a.endswith("ForConditionalGeneration") for a in architectures):
        return (
            f"{model_id!r} is an encoder-decoder model ({archs}): score MonoT5 / RankT5 rerankers with "
            f"Seq2SeqScorer({model_id!r})."
        )
    if any(a.endswith(("Model", "ForMaskedLM", "ForPreTraining")) or "ColBERT" in a for a in architectures):
        return (
            f"{model_id!r} has no classification head (its architectures: {archs}): it is an encoder or "
            "embedding model, so a cross-encoder on it would score with random weights. "
            f"Use BiEncoderScorer({model_id!r}) or ColBERTScorer({model_id!r}) for an embedding model, "
            "or fine-tune a cross-encoder from it (`rerankers-plugins train`)."
        )
    return (
        f"{model_id!r} ({archs}) is neither a sequence-classification cross-encoder nor a causal-LM "
        "reranker, so CrossEncoderScorer cannot score it as its authors do. A listwise or remote-code "
        "reranker can be wrapped as a Ranker (a `rank(query, texts) -> list[int]` object) or called from "
        "a function given to LLMListwiseRanker."
    )


def check_options(
    activation: str | None,
    batch_size: int,
    max_length: int | None,
    runtime: str,
    prompt_format: str | None,
    instruction: str | None,
) -> None:
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation must be 'sigmoid' or None, got {activation!r}")
    as_int(batch_size, "batch_size", minimum=1)
    as_int(max_length, "max_length", minimum=8, allow_none=True)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
        raise ConfigError(
            f"prompt_format must be one of {sorted(PROMPT_FORMATS)} or None, got {prompt_format!r}"
        )
    if instruction is not None and not isinstance(instruction, str):
        raise ConfigError(f"instruction must be a string or None, got {instruction!r}")


def logit_score_module(model: Any) -> Any | None:
    """The LogitScore module of a sentence-transformers causal reranker, or None."""
    for module in model:
        if type(module).__name__ == "LogitScore":
            return module
    return None


def require_reranker_head(model: Any, model_id: str) -> None:
    """Refuse a checkpoint without a trained relevance head (an embedding model loaded as a
    cross-encoder gets a randomly initialised head: every score about the same, silently)."""
    why = refusal(model_id, architectures(model))
    if why is not None:
        raise ConfigError(why)
