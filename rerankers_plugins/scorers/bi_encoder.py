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

import copy
import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import LoadKwargs
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._scheduler import Plan, Unit
from rerankers_plugins.scorers._tokens import TruncationReport
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
        deadline, on_error, scheduler: how calls share the model, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        document_template: what the model reads of each candidate, as for
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
        deadline: float | None = None,
        on_error: OnError = "raise",
        document_template: TemplateLike | None = None,
        scheduler: bool | Mapping[str, Any] = True,
        **load: Unpack[LoadKwargs],
    ) -> None:
        self._serve(deadline, on_error, scheduler)
        self.document_template = as_template(document_template)
        as_int(batch_size, "batch_size", minimum=1)
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
        """L2-normalised float32 embeddings, one row per text (``[n, dim]`` tensor)."""
        self._check_lengths(texts, self.document_prompt)
        return self._encode("document", list(texts))

    def embed_query(self, query: str) -> Any:
        """L2-normalised float32 query embedding (``[dim]`` tensor)."""
        return self._encode("query", [query])[0]

    def score_settings(self) -> Mapping[str, Any]:
        return {"query_prompt": self.query_prompt, "document_prompt": self.document_prompt}

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        (q_len,) = self._check_lengths([query], self.query_prompt, check=False)
        units = [Unit(query, q_len, "query")]
        lengths = self._check_lengths(texts, self.document_prompt)
        units += [Unit(t, n, "document") for t, n in zip(texts, lengths, strict=True)]
        return Plan(units, self._cosines)

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        return list(self._encode(kind, data))

    def _cosines(self, outputs: list[Any]) -> list[float]:
        torch = self._torch
        with torch.inference_mode():
            sims = (torch.stack(outputs[1:]) @ outputs[0]).clamp_(-1.0, 1.0)
        return [float(s) for s in sims.tolist()]
