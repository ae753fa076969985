"""Bi-encoder reranking: cosine similarity of sentence-transformers embeddings.

Cheaper than a cross-encoder (query and texts are encoded separately, no joint attention) and a
good first stage for cascades. Scale SIMILARITY (-1..1).

Prompts are the checkpoint's, as its model card uses them: the query gets the ``query`` prompt and
each text the document prompt, saved under whichever name the checkpoint chose (``document``,
``passage``, ``corpus`` or ``doc``: e5-style and nomic checkpoints save ``passage``). Both are
passed to sentence-transformers as ``prompt=`` through ``encode_query`` / ``encode_document``, so a
Router model still routes each side, and a Pooling module with ``include_prompt=False`` still
leaves the prompt out of the mean.

A document's embedding does not depend on the query, so it is computed once and kept in the same
document-vector cache as ColBERT's (:class:`~rerankers_plugins.scorers._vectors.DocumentEmbeddingCache`:
memory, and disk with ``cache_dir``), keyed by the checkpoint's files digest, the document prompt,
the window and dtype, and the text as the model reads it (a document template filled in): a query
whose candidates were seen before encodes only itself.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._compile import CompileSetting
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import LoadKwargs
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._scheduler import Plan, Unit
from rerankers_plugins.scorers._tokens import TruncationReport
from rerankers_plugins.scorers._vectors import (
    CacheDType,
    DocumentEmbeddingCache,
    check_cache_dtype,
    load_settings,
    model_key,
    resolve_cache_dtype,
)
from rerankers_plugins.templates import TemplateLike, as_template
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
        cache_dir: optional directory for document embeddings shared across processes.
        cache_bytes: memory bound of the in-process document cache (one vector per document:
            512 MiB holds about 350,000 384-dimensional float32 embeddings).
        cache_dtype: how cached embeddings are stored: ``"auto"`` (default) float32 when the encoder
            computes in float32, so cached scores equal fresh ones, float16 when it computes in
            bfloat16 / float16; ``"float16"`` / ``"float32"`` force one.
        deadline, on_error, scheduler: how calls share the model, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        document_template: what the model reads of each candidate, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        compile: whether the model's transformer blocks are compiled at load, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
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
        cache_dir: str | Path | None = None,
        cache_bytes: int = 512 * 2**20,
        cache_dtype: Literal["auto", "float16", "float32"] = "auto",
        deadline: float | None = None,
        on_error: OnError = "raise",
        document_template: TemplateLike | None = None,
        scheduler: bool | Mapping[str, Any] = True,
        compile: CompileSetting = "auto",
        **load: Unpack[LoadKwargs],
    ) -> None:
        self._serve(deadline, on_error, scheduler, compile)
        self.document_template = as_template(document_template)
        as_int(batch_size, "batch_size", minimum=1)
        as_int(cache_bytes, "cache_bytes", minimum=0)
        check_cache_dtype(cache_dtype)
        for what, value in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{what} must be a string or None, got {value!r}")
        self._torch = require("torch", "cross-encoder")
        st = require("sentence_transformers", "cross-encoder")
        ckpt = self._open(model, device, dtype, None, load)
        self.batch_size = batch_size  # texts per batch (sentence-transformers' encode batches)
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
        # calls count their tokens on a copy of the tokenizer: planning never waits for an encode
        # under way in the worker (which holds the lock above while the model runs)
        self._counter, self._counter_lock = copy.deepcopy(self._tokenizer), threading.Lock()
        prompts = dict(getattr(self._model, "prompts", None) or {})
        self.query_prompt = query_prompt if query_prompt is not None else str(prompts.get("query") or "")
        self.document_prompt = document_prompt if document_prompt is not None else _document_prompt(prompts)
        self._truncation = TruncationReport(f"BiEncoderScorer({self.model!r})")
        self.cache_dtype: CacheDType = resolve_cache_dtype(cache_dtype, self.dtype)
        key = model_key(
            Path(ckpt.local) if ckpt.local is not None else f"hub:{ckpt.path}",  # no snapshot download
            ckpt.digest,
            *load_settings(ckpt.options),
            self.document_prompt,
            self.max_length,
            str(self.dtype),
            self.cache_dtype,
            prefix="bi-",
        )
        self.cache = DocumentEmbeddingCache(
            key, max_bytes=cache_bytes, directory=cache_dir, dtype=self.cache_dtype
        )
        self._accelerate(self._model)

    def __repr__(self) -> str:
        return (
            f"BiEncoderScorer({self.model!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, query_prompt={self.query_prompt!r}, "
            f"document_prompt={self.document_prompt!r})"
        )

    def _check_lengths(self, texts: Sequence[str], prompt: str, *, check: bool = True) -> list[int]:
        """Token length of each text with its prompt and special tokens, within the window; warns
        once when a document is cut (``check``)."""
        texts = [prompt + t for t in texts] if prompt else texts
        with self._counter_lock:
            lengths = self._truncation.lengths(self._counter, texts, self.max_length)
        if check:
            self._truncation.check(
                sum(n + 2 > self.max_length for n in lengths), len(lengths), self.max_length
            )
        return [min(n + 2, self.max_length) for n in lengths]

    def _encode(self, kind: str, texts: list[str]) -> Any:
        """L2-normalised float32 embeddings ``[n, dim]`` of queries or documents, with their prompt."""
        encode = self._model.encode_query if kind == "query" else self._model.encode_document
        with self._tokenizer_lock, self._torch.inference_mode():
            emb = encode(
                texts,
                prompt=self.query_prompt if kind == "query" else self.document_prompt,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return emb.float()

    def embed_documents(self, texts: Sequence[str]) -> Any:
        """L2-normalised float32 embeddings, one row per text (``[n, dim]`` tensor; no cache involved)."""
        self._check_lengths(texts, self.document_prompt)
        return self._encode("document", list(texts))

    def index(self, texts: Sequence[str]) -> int:
        """Precompute and cache the embeddings of ``texts`` (memory, and disk when ``cache_dir`` is
        set); returns how many were encoded (the rest were cached already)."""
        return self.cache.fill(texts, lambda todo: list(self.embed_documents(todo)), chunk=1024)

    def embed_query(self, query: str) -> Any:
        """L2-normalised float32 query embedding (``[dim]`` tensor)."""
        return self._encode("query", [query])[0]

    def score_settings(self) -> Mapping[str, Any]:
        settings: dict[str, Any] = {
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
        }
        if self.cache_dtype != "float32":  # stored in float16: scores move by about 1e-3
            settings["cache_dtype"] = self.cache_dtype
        return settings

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        """The query and the documents not cached yet as units; cosines against the cached and the
        fresh embeddings (both as stored, so a cached call scores what a fresh one does)."""
        (q_len,) = self._check_lengths([query], self.query_prompt, check=False)
        units = [Unit(query, q_len, "query")]
        keys, found, missing = self.cache.lookup(texts)
        todo = list(missing.values())  # the truncation warning comes from the texts encoded
        lengths = self._check_lengths(todo, self.document_prompt)
        units += [Unit(t, n, "document") for t, n in zip(todo, lengths, strict=True)]

        def finish(outputs: list[Any]) -> list[float]:
            return self._cosines(outputs[0], self.cache.complete(keys, found, list(missing), outputs[1:]))

        return Plan(units, finish)

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        return list(self._encode(kind, data))

    def _cosines(self, query: Any, documents: Sequence[Any]) -> list[float]:
        """Cosine of the normalised query vector with each normalised document vector."""
        torch = self._torch
        with torch.inference_mode():
            docs = torch.stack([d.float() for d in documents]).to(query.device)
            sims = (docs @ query).clamp_(-1.0, 1.0)
        return [float(s) for s in sims.tolist()]
