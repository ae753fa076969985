"""Cross-encoder reranking over sentence-transformers ``CrossEncoder`` models.

The model is loaded by sentence-transformers (so every checkpoint it supports loads here, from a
Hub id or a local directory) and run by us: pairs are sorted by *token* length before batching,
the weights run in the chosen dtype (bfloat16 where the hardware is fast at it), and logits are
upcast to float32 before the activation so scores on a declared scale come out.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.batching import length_sorted_batches, restore_order
from rerankers_plugins.scorers._hf import (
    DTypeName,
    TruncationReport,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_max_batch_tokens,
    resolve_model,
)
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import ScoreScale

__all__ = ["CrossEncoderScorer"]

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("sigmoid", None)


def _require_classification_head(model: Any, model_id: str) -> None:
    """Refuse a checkpoint without a trained relevance head (an embedding model loaded as a
    cross-encoder gets a randomly initialised head: every score about the same, silently).
    ``model`` is a loaded CrossEncoder, or a local directory (checked before loading)."""
    if isinstance(model, str):
        try:
            config_json = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no readable config: the loader reports what is wrong
        architectures = list(config_json.get("architectures") or [])
    else:
        config = getattr(getattr(model, "model", None), "config", None)
        architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(
            f"{model_id!r} has no classification head (its architectures: {', '.join(architectures)}): it is "
            "an encoder or embedding model, so a cross-encoder on it would score with random weights. "
            f"Use BiEncoderScorer({model_id!r}) or ColBERTScorer({model_id!r}) for an embedding model, "
            "or fine-tune a cross-encoder from it (`rerankers-plugins train`)."
        )


class CrossEncoderScorer(BaseScorer):
    """Score (query, text) pairs jointly with a cross-encoder.

    Args:
        model: a Hugging Face Hub id (``"cross-encoder/ms-marco-MiniLM-L-6-v2"``) or a local directory.
        device: ``None`` picks CUDA when present, else CPU; or any torch device string.
        max_length: token window for query + text; longer pairs are truncated (warned once).
            ``None`` uses the model's own limit.
        batch_size: pairs per forward pass.
        dtype: ``"auto"`` (bfloat16 on CUDA with bf16, on CPUs with AMX-BF16, and on CPUs with
            AVX512-BF16 where a one-off probe finds it faster; else float32), ``"float32"``, ``"bfloat16"`` or ``"float16"`` (CUDA only).
        activation: ``"sigmoid"`` (default) maps a one-label model's logit to 0..1, scale
            PROBABILITY; for a two-label model it is the softmax probability of label 1. ``None``
            returns raw logits (two-label: logit difference), scale LOGIT.
        max_batch_tokens: cap on padded tokens per forward pass (items x longest item). ``"auto"``
            is 1024 on CPU, where large padded batches run slower per token (measured: fp32 100
            SciFact pairs 7.1 s at 1024 vs 8.7 s uncapped), and no cap on accelerators.
            ``None``: only ``batch_size`` applies.
        trust_remote_code, local_files_only, model_kwargs: passed to sentence-transformers.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        dtype: DTypeName = "auto",
        activation: str | None = "sigmoid",
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"activation must be 'sigmoid' or None, got {activation!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
            raise ConfigError(f"max_length must be an int >= 8 or None, got {max_length!r}")
        self._torch = require("torch", "cross-encoder")
        st = require("sentence_transformers", "cross-encoder")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.max_batch_tokens = resolve_max_batch_tokens(max_batch_tokens, self.device)
        self.activation = activation
        self.name = model
        self.model_id = model
        model = resolve_model(model)
        if os.path.isdir(os.path.expanduser(model)):
            _require_classification_head(os.path.expanduser(model), self.model_id)
        self._model = load_model(
            "cross-encoder",
            model,
            lambda: st.CrossEncoder(
                model,
                device=self.device,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
                model_kwargs=model_kwargs,
            ),
        )
        _require_classification_head(self._model, self.model_id)
        self.num_labels = int(self._model.num_labels)
        if self.num_labels not in (1, 2):
            raise ConfigError(
                f"{model!r} has {self.num_labels} output labels; a relevance cross-encoder has 1 "
                "(a score) or 2 (not relevant / relevant)"
            )
        self.scale = ScoreScale.PROBABILITY if activation == "sigmoid" else ScoreScale.LOGIT
        if self.dtype != self._torch.float32:
            self._model.to(self.dtype)
        self._model.eval()
        self.max_length = int(self._model.max_seq_length or 512)
        self._tokenizer = self._model.tokenizer
        self._n_special = int(self._tokenizer.num_special_tokens_to_add(pair=True))
        self._truncation = TruncationReport(f"CrossEncoderScorer({model!r})")
        logger.debug(
            "loaded cross-encoder %s on %s as %s (max_length=%d)",
            model,
            self.device,
            self.dtype,
            self.max_length,
        )

    def __repr__(self) -> str:
        return (
            f"CrossEncoderScorer({self.model_id!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, scale={self.scale.value})"
        )

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each (query, text) pair as the model sees it, after truncation."""
        lengths = self._truncation.lengths(self._tokenizer, [query, *texts], self.max_length)
        q_len, doc_lens = lengths[0], lengths[1:]
        full = [q_len + d + self._n_special for d in doc_lens]
        self._truncation.check(sum(f > self.max_length for f in full), len(full), self.max_length)
        return [min(f, self.max_length) for f in full]

    def fingerprint(self) -> Mapping[str, Any]:
        return {
            "model": self.name,
            "activation": self.activation,
            "max_length": self.max_length,
            "dtype": str(self.dtype),
        }

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        torch = self._torch
        batches = length_sorted_batches(
            self.pair_lengths(query, texts), self.batch_size, self.max_batch_tokens
        )
        out: list[float] = []
        with torch.inference_mode():
            for batch in batches:
                features = self._model.preprocess([(query, texts[i]) for i in batch])
                features = {
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
                }
                logits = self._model(features)["scores"].float()
                out.extend(self._activate(logits).tolist())
        return restore_order(batches, out)

    def _activate(self, logits: Any) -> Any:
        torch = self._torch
        if logits.ndim == 1:
            logits = logits.unsqueeze(-1)
        if self.num_labels == 2:
            if self.activation == "sigmoid":
                return torch.softmax(logits, dim=-1)[:, 1]
            return logits[:, 1] - logits[:, 0]
        logits = logits[:, 0]
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits
