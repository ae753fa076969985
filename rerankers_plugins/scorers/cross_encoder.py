"""Cross-encoder reranking over sentence-transformers ``CrossEncoder`` models.

The model is loaded by sentence-transformers (so every checkpoint it supports loads here, from a
Hub id or a local directory) and run by us: each call tokenizes its pairs once, sorts them by
*token* length before batching, runs the weights in the chosen dtype (bfloat16 where the hardware
is fast at it) or through ONNX Runtime (``backend="onnx"`` / ``"onnx-int8"``), and upcasts logits
to float32 before the activation so scores on a declared scale come out.
"""

from __future__ import annotations

import inspect
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
    files_digest,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_max_batch_tokens,
    resolve_model,
)
from rerankers_plugins.scorers._onnx import BACKENDS, BackendName, OnnxCrossEncoder
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
            chooses by device and thread count (:func:`resolve_max_batch_tokens`): on CPU 1024
            tokens per thread (at most 8192), no cap on accelerators. ``None``: only ``batch_size``
            applies.
        backend: ``"torch"`` (default), or ONNX Runtime on CPU: ``"onnx"`` (float32) or
            ``"onnx-int8"`` (weights int8 per channel, activations quantised per call; faster on
            CPUs with integer dot-product instructions, scores within about 0.01 of float32 but not
            equal: measure agreement on your data). The graph is exported once and cached under
            ``~/.cache/rerankers-plugins/onnx`` (``RERANKERS_CACHE``), keyed by the weights; needs the
            ``onnx`` extra.
        warmup: run one short pair at load, so the first call does not pay one-off set-up work.
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
        backend: BackendName = "torch",
        warmup: bool = True,
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
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._torch = require("torch", "cross-encoder")
        st = require("sentence_transformers", "cross-encoder")
        self.device = resolve_device(device)
        self.backend = backend
        if backend != "torch":
            require("onnxruntime", "onnx")
            if self.device != "cpu":
                raise ConfigError(f"backend={backend!r} runs on CPU; use backend='torch' on {self.device!r}")
            if dtype not in ("auto", "float32"):
                raise ConfigError(
                    f"backend={backend!r} sets its own precision; leave dtype='auto', got {dtype!r}"
                )
            self.dtype = self._torch.float32
        else:
            self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.max_batch_tokens = resolve_max_batch_tokens(
            max_batch_tokens,
            self.device,
            threads=self._torch.get_num_threads(),
        )
        self.activation = activation
        self.name = model
        self.model_id = model
        model = resolve_model(model)
        self._files = files_digest(model)
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
        names = tuple(getattr(self._tokenizer, "model_input_names", ()) or ())
        hf = self._model.model
        accepted = set(inspect.signature(hf.forward).parameters) if hf is not None else set(names)
        # what the tokenizer makes *and* the model takes (a DistilBERT behind a BERT tokenizer has
        # no token_type_ids), as sentence-transformers filters them
        self._inputs = tuple(
            n for n in ("input_ids", "token_type_ids", "attention_mask") if n in names and n in accepted
        ) or ("input_ids", "attention_mask")
        # Our one-pass tokenization reproduces preprocess() for plain text pairs; a model configured
        # with prompts or processing options keeps sentence-transformers' own preprocess per batch.
        first = self._model[0] if len(self._model) else None
        self._st_preprocess = bool(
            getattr(self._model, "prompts", None)
            or getattr(self._model, "default_prompt_name", None)
            or getattr(first, "processing_kwargs", None)
        )
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._pad_left = getattr(self._tokenizer, "padding_side", "right") == "left"
        self._onnx: OnnxCrossEncoder | None = None
        if backend != "torch":
            if len(self._model) != 1 or self._model.model is None or self._st_preprocess:
                raise ConfigError(
                    f"backend={backend!r} needs a checkpoint whose relevance head is part of its "
                    f"transformers model; {model!r} has extra sentence-transformers modules, prompts or processing options: use backend='torch'"
                )
            self._onnx = OnnxCrossEncoder(
                self._model.model,
                source=model,
                inputs=self._inputs,
                quantize=backend == "onnx-int8",
                threads=self._torch.get_num_threads(),
            )
        logger.debug(
            "loaded cross-encoder %s on %s as %s, backend %s (max_length=%d, max_batch_tokens=%s)",
            model,
            self.device,
            self.dtype,
            backend,
            self.max_length,
            self.max_batch_tokens,
        )
        if warmup:
            # One short pair through the whole path: the first user call then pays none of the
            # one-off costs (kernel selection, thread pool start-up, the tokenizer's first call).
            self.score("warm up", ["warm up"])

    def __repr__(self) -> str:
        backend = "" if self.backend == "torch" else f", backend={self.backend!r}"
        return (
            f"CrossEncoderScorer({self.model_id!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}{backend}, scale={self.scale.value})"
        )

    def _encode(self, query: str, texts: Sequence[str]) -> tuple[list[dict[str, list[int]]], int]:
        """Tokenize every (query, text) pair once, truncated to the window the way
        sentence-transformers does it (``longest_first``): the token ids per pair, and how many
        pairs were cut."""
        enc = self._tokenizer(
            [query] * len(texts),
            list(texts),
            truncation="longest_first",
            max_length=self.max_length,
            return_attention_mask=False,
        )
        names = [n for n in self._inputs if n != "attention_mask" and n in enc]
        rows = [{n: enc[n][i] for n in names} for i in range(len(texts))]
        encodings = getattr(enc, "encodings", None)
        if encodings:  # fast tokenizers keep what truncation cut
            over = sum(1 for e in encodings if e.overflowing)
        else:  # a slow tokenizer: count the full pair lengths instead
            over = sum(f > self.max_length for f in self._full_pair_lengths(query, texts))
        return rows, over

    def _full_pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each pair before truncation (capped one past the window per text)."""
        lengths = self._truncation.lengths(self._tokenizer, [query, *texts], self.max_length)
        return [lengths[0] + d + self._n_special for d in lengths[1:]]

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each (query, text) pair as the model sees it, after truncation."""
        if not texts:
            return []
        rows, over = self._encode(query, texts)
        self._truncation.check(over, len(rows), self.max_length)
        return [len(r["input_ids"]) for r in rows]

    def fingerprint(self) -> Mapping[str, Any]:
        settings = {
            "model": self.name,
            "activation": self.activation,
            "max_length": self.max_length,
            "dtype": str(self.dtype),
        }
        if self._files is not None:  # a local directory: a model retrained there is another model
            settings["files"] = self._files
        if self.backend != "torch":  # int8 scores differ from float32: never share cache entries
            settings["backend"] = self.backend
        return settings

    def _collate(self, rows: Sequence[dict[str, list[int]]], batch: Sequence[int]) -> dict[str, Any]:
        """Pad one batch of token rows into int64 arrays ``[len(batch), longest]`` (padding on the
        tokenizer's side, attention mask 0 there), as ``tokenizer.pad`` would."""
        np = require("numpy", "cross-encoder")
        width = max(len(rows[i]["input_ids"]) for i in batch)
        arrays = {
            name: np.full((len(batch), width), self._pad_id if name == "input_ids" else 0, dtype=np.int64)
            for name in self._inputs
        }
        for r, i in enumerate(batch):
            n = len(rows[i]["input_ids"])
            cols = slice(width - n, width) if self._pad_left else slice(0, n)
            for name, array in arrays.items():
                array[r, cols] = 1 if name == "attention_mask" else rows[i][name]
        return arrays

    def _forward(self, rows: Sequence[dict[str, list[int]]], batch: Sequence[int]) -> list[float]:
        """Scores of one batch, on this scorer's scale."""
        torch = self._torch
        arrays = self._collate(rows, batch)
        if self._onnx is not None:
            logits = torch.from_numpy(self._onnx.logits(arrays)).float()
        else:
            features: dict[str, Any] = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
            features["modality"] = "text"
            with torch.inference_mode():
                logits = self._model(features)["scores"].float()
        return [float(x) for x in self._activate(logits).tolist()]

    def _score_with_preprocess(self, query: str, texts: Sequence[str]) -> list[float]:
        """sentence-transformers' own preprocess per batch (models with prompts or processing options)."""
        torch = self._torch
        full = self._full_pair_lengths(query, texts)
        self._truncation.check(sum(f > self.max_length for f in full), len(full), self.max_length)
        batches = length_sorted_batches(
            [min(f, self.max_length) for f in full], self.batch_size, self.max_batch_tokens
        )
        out: list[float] = []
        with torch.inference_mode():
            for batch in batches:
                features = self._model.preprocess([(query, texts[i]) for i in batch])
                features = {
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
                }
                out.extend(float(x) for x in self._activate(self._model(features)["scores"].float()).tolist())
        return restore_order(batches, out)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._st_preprocess:
            return self._score_with_preprocess(query, texts)
        rows, over = self._encode(query, texts)
        self._truncation.check(over, len(rows), self.max_length)
        batches = length_sorted_batches(
            [len(r["input_ids"]) for r in rows], self.batch_size, self.max_batch_tokens
        )
        out: list[float] = []
        for batch in batches:
            out.extend(self._forward(rows, batch))
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
