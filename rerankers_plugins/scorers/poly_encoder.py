"""Poly-encoder reranking: documents as m cached code vectors, the query attends over them.

The middle ground between a bi-encoder (one vector per side, no interaction) and a cross-encoder
(full joint attention). One transformer encoder reads each side separately:

- a **document** becomes ``m`` code vectors: ``m`` learned, query-independent codes each attend
  (dot-product attention, masked) over the document's token states. They do not depend on the
  query, so they are computed once per document and cached like ColBERT's document vectors
  (memory, and disk with ``cache_dir``);
- a **query** becomes one vector (mean of its token states);
- the query attends over the document's codes (softmax of query . code), and the **score** is the
  dot product of the query vector with that attended mixture, times a learned scale (starting at
  1/sqrt(hidden size)). It is unbounded and is trained as a logit (binary cross-entropy by default), so the scale is LOGIT: ``sigmoid(score)`` is the model's
  relevance probability for a BCE-trained model.

At initialisation the codes are small, so each attends almost uniformly and every code is close to
the document's mean-pooled vector: an untrained poly-encoder starts as the mean-pooling bi-encoder
it was built from, and training adds what the codes learn.

A poly-encoder is a directory: the encoder and tokenizer (``save_pretrained``), ``poly_codes.safetensors``
(the codes) and ``poly_encoder.json`` (settings). ``rerankers-plugins train --arch poly-encoder``
writes one from any BERT-like encoder.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._compile import CompileSetting
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import (
    Checkpoint,
    LoadKwargs,
    LoadOptions,
    load_model,
    resolve_model,
)
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._scheduler import Plan, Unit, compute_units
from rerankers_plugins.scorers._tokens import TruncationReport, pad_right
from rerankers_plugins.scorers._vectors import DocumentEmbeddingCache, load_settings, model_key
from rerankers_plugins.templates import TemplateLike, as_template
from rerankers_plugins.types import ScoreScale

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "PolyEncoderScorer",
    "build_poly_encoder",
    "load_poly_encoder",
    "tokenize",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "poly_encoder.json"
CODES_NAME = "poly_codes.safetensors"
FORMAT = "rerankers-plugins poly-encoder 1"
#: query tokens kept (special tokens included), in training and by default in scoring
QUERY_LENGTH = 64


@functools.cache
def _module() -> Any:
    """The ``torch.nn.Module`` class, defined once, on first use (torch is an optional dependency)."""
    torch = require("torch", "cross-encoder")

    class PolyEncoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        """Encoder + ``m`` codes. ``query_vectors`` -> ``[B, H]``; ``document_codes`` -> ``[B, m, H]``;
        :meth:`score` -> ``[B]``; ``forward`` scores a training batch (so the trainer's autocast and
        device wrapping apply)."""

        _keys_to_ignore_on_save = None  # read by transformers' Trainer when it resumes a checkpoint

        def __init__(
            self, encoder: Any, tokenizer: Any, codes: Any, settings: Mapping[str, Any], scale: Any = None
        ) -> None:
            super().__init__()
            self.encoder = encoder
            self.tokenizer = tokenizer
            self.codes = torch.nn.Parameter(codes)
            # learned logit scale, from 1/sqrt(hidden): an encoder's raw dot products (tens) would
            # start BCE with saturated logits
            start = float(codes.shape[1]) ** -0.5 if scale is None else scale
            self.logit_scale = torch.nn.Parameter(torch.as_tensor(start, dtype=torch.float32).reshape(()))
            self.settings = dict(settings)

        def _states(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def query_vectors(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self._states(input_ids, attention_mask)
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

        def document_codes(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self._states(input_ids, attention_mask)  # [B, L, H]
            logits = torch.einsum("mh,blh->bml", self.codes.to(states.dtype), states)
            logits = logits.masked_fill(attention_mask[:, None, :] == 0, torch.finfo(logits.dtype).min)
            return torch.einsum("bml,blh->bmh", torch.softmax(logits, dim=-1), states)

        def forward(self, q_ids: Any, q_mask: Any, d_ids: Any, d_mask: Any, label_mask: Any) -> Any:
            """Scores of a collated training batch: document i belongs to the query whose row of
            ``label_mask`` holds its ``True`` (row-major order)."""
            queries = self.query_vectors(q_ids, q_mask)
            codes = self.document_codes(d_ids, d_mask)
            owner = torch.arange(label_mask.shape[0], device=label_mask.device)[:, None]
            return self.score(queries[owner.expand_as(label_mask)[label_mask]], codes)

        def score(self, queries: Any, codes: Any) -> Any:
            """``queries`` ``[B, H]``, ``codes`` ``[B, m, H]`` -> ``[B]``: the query attends over its
            document's codes, then the dot product with the attended mixture, times the learned scale."""
            weights = torch.softmax(torch.einsum("bh,bmh->bm", queries, codes), dim=-1)
            mixed = torch.einsum("bm,bmh->bh", weights, codes)
            return (mixed * queries).sum(-1) * self.logit_scale.to(queries.dtype)

        def save_pretrained(self, directory: str | Path) -> None:
            safetensors = require("safetensors.torch", "cross-encoder")
            root = Path(directory)
            root.mkdir(parents=True, exist_ok=True)
            self.encoder.save_pretrained(str(root))
            self.tokenizer.save_pretrained(str(root))
            tensors = {"codes": self.codes, "scale": self.logit_scale}
            safetensors.save_file(
                {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(root / CODES_NAME)
            )
            (root / CONFIG_NAME).write_text(
                json.dumps({"format": FORMAT, **self.settings}, indent=2) + "\n", encoding="utf-8"
            )

    return PolyEncoder


def build_poly_encoder(base: str, *, codes: int = 16, max_length: int = 256, seed: int = 0) -> Any:
    """A new poly-encoder module from a BERT-like encoder ``base`` (directory or Hub id; a
    sentence-transformers or cross-encoder checkpoint gives its encoder weights): ``codes`` code
    vectors drawn small (N(0, 0.02)), so that each starts as mean pooling."""
    codes = as_int(codes, "codes", minimum=1) or 1
    torch = require("torch", "cross-encoder")
    transformers = require("transformers", "cross-encoder")
    path = resolve_model(base)
    tok, encoder = load_model(
        "encoder",
        path,
        lambda: (
            transformers.AutoTokenizer.from_pretrained(path),
            transformers.AutoModel.from_pretrained(path).float(),
        ),
        cls="PolyEncoderScorer",
    )
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(codes, int(encoder.config.hidden_size), generator=gen) * 0.02
    settings = {"codes": codes, "max_length": max_length, "base": base}
    return _module()(encoder, tok, init, settings)


def load_poly_encoder(directory: str | Path, options: LoadOptions | None = None) -> Any:
    """The poly-encoder module saved in ``directory`` (as written by ``save_pretrained``);
    ``options`` give the tokenizer's, config's and encoder's ``from_pretrained`` their keywords."""
    options = options or LoadOptions()
    root = Path(directory)
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        raise ConfigError(
            f"{str(root)!r} is not a poly-encoder directory (no {CONFIG_NAME}); train one with "
            "`rerankers-plugins train DATA_DIR --arch poly-encoder --base ENCODER --out DIR`"
        )
    settings = json.loads(cfg_path.read_text(encoding="utf-8"))
    if settings.get("format") != FORMAT:
        raise ConfigError(f"{cfg_path} has format {settings.get('format')!r}; this version reads {FORMAT!r}")
    transformers = require("transformers", "cross-encoder")
    safetensors = require("safetensors.torch", "cross-encoder")
    if not (root / CODES_NAME).is_file():
        raise BackendError(f"poly-encoder {root}: the codes file {root / CODES_NAME} is missing")
    tensors = safetensors.load_file(str(root / CODES_NAME))
    codes = tensors["codes"]
    tok = transformers.AutoTokenizer.from_pretrained(str(root), **options.tokenizer())
    config = transformers.AutoConfig.from_pretrained(str(root), **options.config())
    encoder = transformers.AutoModel.from_pretrained(str(root), config=config, **options.model()).float()
    if int(codes.shape[1]) != int(encoder.config.hidden_size):
        raise BackendError(
            f"poly-encoder {root}: codes have width {int(codes.shape[1])}, the encoder {encoder.config.hidden_size}"
        )
    settings.pop("format", None)
    return _module()(
        encoder, tok, codes, settings, scale=float(tensors["scale"]) if "scale" in tensors else 1.0
    )


def tokenize(tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, at most ``limit`` tokens."""
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=limit, return_attention_mask=False)
    return [list(ids) for ids in enc["input_ids"]]


class PolyEncoderScorer(LocalScorer):
    """Rerank with a poly-encoder (see the module docstring); document codes are cached.

    Args:
        model: a poly-encoder directory (``rerankers-plugins train --arch poly-encoder``) or a Hub
            id of one.
        device, dtype: as for :class:`~rerankers_plugins.CrossEncoderScorer`.
        query_length: query tokens kept (special tokens included).
        max_length: document tokens kept; default the length the model was trained with.
            Longer documents are truncated (warned once).
        cache_dir: optional directory for document codes shared across processes.
        cache_bytes: memory bound of the in-process code cache.
        batch_size, max_batch_tokens: document encoding batches (length-sorted).
        deadline, on_error, scheduler: how calls share the model, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        document_template: what the model reads of each candidate, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        compile: whether the model's transformer blocks are compiled at load, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        **load: how the checkpoint is fetched and built (``revision``, ``local_files_only``, ...),
            as for :class:`~rerankers_plugins.CrossEncoderScorer`.

    Scale LOGIT: the score is an unbounded dot product, trained as a logit.
    """

    renamed: ClassVar[Mapping[str, str]] = {"doc_length": "max_length"}

    scale = ScoreScale.LOGIT

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: DTypeName = "auto",
        query_length: int = QUERY_LENGTH,
        max_length: int | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = 512 * 2**20,
        batch_size: int = 32,
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        deadline: float | None = None,
        on_error: OnError = "raise",
        document_template: TemplateLike | None = None,
        scheduler: bool | Mapping[str, Any] = True,
        compile: CompileSetting = "auto",
        **load: Unpack[LoadKwargs],
    ) -> None:
        self._serve(deadline, on_error, scheduler, compile)
        self.document_template = as_template(document_template)
        as_int(query_length, "query_length", minimum=4)
        as_int(max_length, "max_length", minimum=4, allow_none=True)
        as_int(batch_size, "batch_size", minimum=1)
        self._torch = require("torch", "cross-encoder")
        ckpt = self._open(model, device, dtype, max_batch_tokens, load)
        self.batch_size = batch_size

        def load_files() -> tuple[Path, Any]:
            root = ckpt.root()
            if not (root / CONFIG_NAME).is_file():
                return root, None
            return root, load_poly_encoder(root, ckpt.options)

        root, module = ckpt.load("poly-encoder", load_files, cls="PolyEncoderScorer")
        if module is None:
            load_poly_encoder(root)  # raises the ConfigError that says what the directory lacks
        self._module = module.to(self.device, dtype=self.dtype).eval()
        self._tokenizer = module.tokenizer
        self._tokenizer_lock = ckpt.tokenizer_lock
        self.codes = int(module.codes.shape[0])
        limit = Checkpoint.position_limit(module.encoder.config)
        self.query_length = min(query_length, limit)
        self.max_length = min(max_length or int(module.settings.get("max_length", 256)), limit)
        self._pad = int(self._tokenizer.pad_token_id or 0)
        self._doc_truncation = TruncationReport(f"PolyEncoderScorer({self.model!r}) documents")
        self.cache = DocumentEmbeddingCache(
            model_key(
                root,
                ckpt.digest,
                self.max_length,
                str(self.dtype),
                *load_settings(ckpt.options),
                prefix="poly-",
            ),
            max_bytes=cache_bytes,
            directory=cache_dir,
        )
        self._accelerate(self._module)

    def __repr__(self) -> str:
        return (
            f"PolyEncoderScorer({self.model!r}, codes={self.codes}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r})"
        )

    def score_settings(self) -> Mapping[str, Any]:
        return {"query_length": self.query_length}

    def _query_rows(self, queries: Sequence[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            return tokenize(self._tokenizer, queries, self.query_length)

    def _document_rows(self, texts: Sequence[str]) -> list[list[int]]:
        """Token rows of the documents, cut to ``max_length`` keeping the closing special token."""
        with self._tokenizer_lock:
            rows = tokenize(self._tokenizer, texts, self.max_length + 1)
        over = sum(len(r) > self.max_length for r in rows)
        self._doc_truncation.check(over, len(rows), self.max_length)
        return [r if len(r) <= self.max_length else r[: self.max_length - 1] + r[-1:] for r in rows]

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        """Query vectors ``[H]`` or document codes ``[m, H]`` (float32) of one batch of token rows."""
        ids, mask = pad_right(data, self._pad)
        encode = self._module.query_vectors if kind == "query" else self._module.document_codes
        with self._torch.inference_mode():
            out = encode(ids.to(self.device), mask.to(self.device)).float()
        return list(out)

    def encode_query(self, query: str) -> Any:
        """``[H]`` float32 query vector."""
        return self._run_batch("query", self._query_rows([query]), [0])[0]

    def encode_documents(self, texts: Sequence[str]) -> list[Any]:
        """``[m, H]`` float32 codes for each text (no cache involved)."""
        if not texts:
            return []
        units = [Unit(r, len(r), "document") for r in self._document_rows(texts)]
        return compute_units(units, self._run_batch, self.batch_size, self.max_batch_tokens)

    def index(self, texts: Sequence[str]) -> int:
        """Precompute and cache the codes of ``texts``; returns how many were encoded."""
        return self.cache.fill(texts, self.encode_documents, chunk=max(self.batch_size * 8, 256))

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        """The query's row and the rows of the documents not cached yet; the scores from their
        vectors and the cached codes (float16 as stored: fresh = cached)."""
        keys, found, missing = self.cache.lookup(texts)
        rows = self._document_rows(list(missing.values())) if missing else []
        units = [Unit(r, len(r), "query") for r in self._query_rows([query])]
        units += [Unit(r, len(r), "document") for r in rows]

        def finish(outputs: list[Any]) -> list[float]:
            codes = self.cache.complete(keys, found, list(missing), outputs[1:])
            return self._scores(outputs[0], codes)

        return Plan(units, finish)

    def _scores(self, q: Any, codes: Sequence[Any]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(codes), 256):
                part = torch.stack([c.to(self.device, torch.float32) for c in codes[start : start + 256]])
                values = self._module.score(q.expand(len(part), -1), part)
                out.extend(float(v) for v in values.cpu().tolist())
        return out
