"""Bi-encoder reranking: cosine similarity of sentence-transformers embeddings.

Cheaper than a cross-encoder (query and texts are encoded separately, no joint attention) and a
good first stage for cascades. Scale SIMILARITY (-1..1).

Prompts are the checkpoint's, as its model card uses them: the query gets the ``query`` prompt and
each text the document prompt, saved under whichever name the checkpoint chose (``document``,
``passage``, ``corpus`` or ``doc``: e5-style and nomic checkpoints save ``passage``). Both are
passed to sentence-transformers as ``prompt=`` through ``encode_query`` / ``encode_document``, so a
Router model still routes each side, and a Pooling module with ``include_prompt=False`` still
leaves the prompt out of the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import LoadKwargs
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._tokens import TruncationReport
from rerankers_plugins.types import ScoreScale

__all__ = ["DOCUMENT_PROMPT_NAMES", "BiEncoderScorer"]

logger = logging.getLogger(__name__)

#: the names a checkpoint's document prompt is saved under, tried in this order: those
#: sentence-transformers' ``encode_document`` tries ("document", "passage", "corpus"), then "doc".
#: sentence-transformers 6.x seeds every model with ``{"query": "", "document": ""}``, so its own
#: lookup stops at that empty "document" and drops a saved "passage" prompt; an empty value is
#: therefore read as "not set" and the next name is tried.
DOCUMENT_PROMPT_NAMES: tuple[str, ...] = ("document", "passage", "corpus", "doc")


def _document_prompt(prompts: Mapping[str, str | None]) -> str:
    for name in DOCUMENT_PROMPT_NAMES:
        if prompts.get(name):
            return str(prompts[name])
    return ""


class BiEncoderScorer(LocalScorer):
    """Cosine similarity between the query embedding and each text embedding.

    Args:
        model: a Hub id (``"sentence-transformers/all-MiniLM-L6-v2"``) or a local directory.
        device, dtype, batch_size, max_length: as for :class:`CrossEncoderScorer`.
        query_prompt, document_prompt: the text put before the query / each document. ``None``
            (the default) reads the checkpoint's saved prompts: ``query`` for the query, the first
            non-empty of :data:`DOCUMENT_PROMPT_NAMES` for documents. Pass them for checkpoints whose
            model card asks for prompts that its files do not save (the published e5 and bge
            checkpoints: ``"query: "`` / ``"passage: "``, and bge's
            ``"Represent this sentence for searching relevant passages: "`` / ``""``).
        **load: how the checkpoint is fetched and built (``revision``, ``trust_remote_code``, ...),
            as for :class:`CrossEncoderScorer`.
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
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        **load: Unpack[LoadKwargs],
    ) -> None:
        as_int(batch_size, "batch_size", minimum=1)
        for what, value in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{what} must be a string or None, got {value!r}")
        self._torch = require("torch", "cross-encoder")
        st = require("sentence_transformers", "cross-encoder")
        ckpt = self._open(model, device, dtype, None, load)
        self.batch_size = batch_size
        options = ckpt.options.sentence_transformers(st.SentenceTransformer)
        self._model = ckpt.load(
            "sentence-transformers",
            lambda: st.SentenceTransformer(ckpt.path, device=self.device, **options),
            cls="BiEncoderScorer",
        )
        if max_length is not None:
            self._model.max_seq_length = max_length
        if self.dtype != self._torch.float32:
            self._model.to(self.dtype)
        self._model.eval()
        self.max_length = int(self._model.max_seq_length or 512)
        self._tokenizer = self._model.tokenizer
        # sentence-transformers tokenizes inside encode, so the encode calls hold the lock too
        self._tokenizer_lock = ckpt.tokenizer_lock
        prompts = dict(getattr(self._model, "prompts", None) or {})
        self.query_prompt = query_prompt if query_prompt is not None else str(prompts.get("query") or "")
        self.document_prompt = document_prompt if document_prompt is not None else _document_prompt(prompts)
        self._truncation = TruncationReport(f"BiEncoderScorer({self.model!r})")

    def __repr__(self) -> str:
        return (
            f"BiEncoderScorer({self.model!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, query_prompt={self.query_prompt!r}, "
            f"document_prompt={self.document_prompt!r})"
        )

    def _check_lengths(self, texts: Sequence[str], prompt: str) -> None:
        texts = [prompt + t for t in texts] if prompt else texts
        with self._tokenizer_lock:
            lengths = self._truncation.lengths(self._tokenizer, texts, self.max_length)
        self._truncation.check(sum(n + 2 > self.max_length for n in lengths), len(lengths), self.max_length)

    def embed_documents(self, texts: Sequence[str]) -> Any:
        """L2-normalised float32 embeddings, one row per text (``[n, dim]`` tensor)."""
        self._check_lengths(texts, self.document_prompt)
        with self._tokenizer_lock:
            emb = self._model.encode_document(
                list(texts),
                prompt=self.document_prompt,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return emb.float()

    def embed_query(self, query: str) -> Any:
        """L2-normalised float32 query embedding (``[dim]`` tensor)."""
        with self._tokenizer_lock:
            emb = self._model.encode_query(
                [query],
                prompt=self.query_prompt,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return emb.float()[0]

    def score_settings(self) -> Mapping[str, Any]:
        return {"query_prompt": self.query_prompt, "document_prompt": self.document_prompt}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        with self._torch.inference_mode():
            q = self.embed_query(query)
            docs = self.embed_documents(texts)
            sims = (docs @ q).clamp_(-1.0, 1.0)
        return [float(s) for s in sims.tolist()]
