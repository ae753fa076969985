"""Bi-encoder reranking: cosine similarity of sentence-transformers embeddings.

Cheaper than a cross-encoder (query and texts are encoded separately, no joint attention) and a
good first stage for cascades. Scale SIMILARITY (-1..1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._hf import (
    DTypeName,
    TruncationReport,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import ScoreScale

__all__ = ["BiEncoderScorer"]

logger = logging.getLogger(__name__)


class BiEncoderScorer(BaseScorer):
    """Cosine similarity between the query embedding and each text embedding.

    Args:
        model: a Hub id (``"sentence-transformers/all-MiniLM-L6-v2"``) or a local directory.
        device, dtype, batch_size, max_length: as for :class:`CrossEncoderScorer`.
        trust_remote_code, local_files_only, model_kwargs: passed to sentence-transformers.

    Texts are encoded with the model's document prompt and the query with its query prompt,
    where the model defines them (``encode_query`` / ``encode_document``).
    """

    scale = ScoreScale.SIMILARITY

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        dtype: DTypeName = "auto",
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self._torch = require("torch", "cross-encoder")
        st = require("sentence_transformers", "cross-encoder")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.name = model
        self.model_id = model
        model = resolve_model(model)
        self._model = load_model(
            "sentence-transformers",
            model,
            lambda: st.SentenceTransformer(
                model,
                device=self.device,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
                model_kwargs=model_kwargs,
            ),
            cls="BiEncoderScorer",
        )
        if max_length is not None:
            self._model.max_seq_length = max_length
        if self.dtype != self._torch.float32:
            self._model.to(self.dtype)
        self._model.eval()
        self.max_length = int(self._model.max_seq_length or 512)
        self._tokenizer = self._model.tokenizer
        self._truncation = TruncationReport(f"BiEncoderScorer({model!r})")

    def __repr__(self) -> str:
        return (
            f"BiEncoderScorer({self.model_id!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r})"
        )

    def _check_lengths(self, texts: Sequence[str]) -> None:
        lengths = self._truncation.lengths(self._tokenizer, texts, self.max_length)
        self._truncation.check(sum(n + 2 > self.max_length for n in lengths), len(lengths), self.max_length)

    def embed_documents(self, texts: Sequence[str]) -> Any:
        """L2-normalised float32 embeddings, one row per text (``[n, dim]`` tensor)."""
        self._check_lengths(texts)
        encode = getattr(self._model, "encode_document", self._model.encode)
        emb = encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return emb.float()

    def embed_query(self, query: str) -> Any:
        """L2-normalised float32 query embedding (``[dim]`` tensor)."""
        encode = getattr(self._model, "encode_query", self._model.encode)
        emb = encode([query], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return emb.float()[0]

    def fingerprint(self) -> Mapping[str, Any]:
        return {"model": self.name, "max_length": self.max_length, "dtype": str(self.dtype)}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        with self._torch.inference_mode():
            q = self.embed_query(query)
            docs = self.embed_documents(texts)
            sims = (docs @ q).clamp_(-1.0, 1.0)
        return [float(s) for s in sims.tolist()]
