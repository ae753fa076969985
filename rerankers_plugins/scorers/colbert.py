"""ColBERT late-interaction reranking (MaxSim) with a document-embedding cache.

Query and documents are encoded separately into one vector per token; a document's score is the
MaxSim of the query's vectors against its own (see :mod:`rerankers_plugins.ops.maxsim`). Document
vectors do not depend on the query, so they are computed once and reused: reranking cached
candidates costs one query encoding plus a matrix product.

Three checkpoint layouts load from a local directory (or a Hub id, fetched by huggingface_hub),
each encoded as its reference library encodes it:

``colbert``  the colbert-ai layout (colbert-ir/colbertv2.0): a BERT encoder whose weights file also
             holds ``linear.weight``, the projection (no bias, no activation); settings in
             ``artifact.metadata``: ``query_token_id`` / ``doc_token_id`` markers (default
             ``[unused0]`` / ``[unused1]``), ``query_maxlen`` (queries always padded with
             ``[MASK]`` to it, attended when ``attend_to_mask_tokens``), ``doc_maxlen``,
             ``mask_punctuation`` (punctuation dropped from documents), ``similarity`` (only
             ``"cosine"`` is accepted). Rules of colbert-ai's ``colbert/modeling/colbert.py`` and
             ``colbert/modeling/tokenization/{query,doc}_tokenization.py``. Detected by
             ``artifact.metadata`` or ``"HF_ColBERT"`` in config.json's architectures.
``pylate``   the sentence-transformers layout written by PyLate: the encoder at the root, one or more
             ``Dense`` modules in their own folders, applied in ``modules.json`` order (each with
             its ``bias``, ``activation_function`` and ``use_residual`` from its config.json, as
             sentence-transformers' ``Dense`` applies them); ``query_prefix`` / ``document_prefix``
             tokens (default ``[Q] `` / ``[D] ``), ``query_length``, ``document_length``,
             ``do_query_expansion``, ``attend_to_expansion_tokens`` and ``skiplist_words``
             (default: punctuation) in ``config_sentence_transformers.json``. Rules of PyLate's
             ``pylate/models/colbert.py``.

             A directory with both sets of files (answerai-colbert-small-v1: ``artifact.metadata``
             and ``linear.weight`` beside ``modules.json`` and ``1_Dense/``) is read as this layout:
             PyLate and sentence-transformers' ``MultiVectorEncoder`` both load such a directory
             through its ``modules.json``, with the Dense modules, prefixes and lengths of the
             sentence-transformers files, and never read ``artifact.metadata`` or the root
             ``linear.weight``. We do the same, so all three score it alike.
``plain``    any other transformers / sentence-transformers encoder: its L2-normalised token
             embeddings without projection, special and padding tokens removed. Measured on
             SciFact, BM25 top-100 reranked this way with all-MiniLM-L6-v2 beats both BM25 and the
             same model's cosine (README, Benchmarks).

Lengths count every token (``[CLS]``, the marker, ``[SEP]`` and query padding included). The
constructor's ``query_length`` / ``max_length`` win over the checkpoint's declared lengths; where
neither exists the fallbacks are PyLate's defaults, 32 and 180 (plain encoders, which declare
nothing: 32 and 300, the settings of the README benchmark).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.ops.maxsim import maxsim, pad_vectors
from rerankers_plugins.scorers._colbert_layouts import Layout, detect_layout, load_spec
from rerankers_plugins.scorers._compile import CompileSetting
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import Checkpoint, LoadKwargs
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._scheduler import Plan, Unit, compute_units
from rerankers_plugins.scorers._tokens import TruncationReport, pad_right
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

__all__ = ["ColBERTScorer", "DocumentEmbeddingCache", "Layout", "detect_layout"]

logger = logging.getLogger(__name__)

#: PyLate's defaults where neither the constructor nor the checkpoint gives a length
DEFAULT_QUERY_LENGTH = 32
DEFAULT_DOC_LENGTH = 180
#: plain encoders declare no lengths; 300 is what the README benchmark measured
PLAIN_DOC_LENGTH = 300


class ColBERTScorer(LocalScorer):
    """Late-interaction (MaxSim) reranking over ColBERT, PyLate or plain encoder checkpoints.

    Args:
        model: local directory or Hub id (see the module docstring for the layouts).
        device, dtype: as for :class:`~rerankers_plugins.CrossEncoderScorer` (``"auto"``: bfloat16
            where the hardware is fast at it).
        query_length: query tokens including ``[CLS]``, the marker and ``[SEP]``; longer queries are
            truncated, shorter ones padded with ``[MASK]`` where the checkpoint expands queries.
            None (default): the checkpoint's ``query_maxlen`` (colbert-ai) or ``query_length``
            (PyLate), else 32.
        max_length: document tokens including ``[CLS]``, the marker and ``[SEP]``; longer documents
            are truncated (warned once). None (default): the checkpoint's ``doc_maxlen`` /
            ``document_length``, else 180 (300 for plain encoders). Both lengths are capped at the
            encoder's ``max_position_embeddings``.
        cache_dir: optional directory for document vectors shared across processes.
        cache_bytes: memory bound of the in-process document cache.
        cache_dtype: how cached document vectors are stored. ``"auto"`` (default): float32 when the
            encoder computes in float32, so that scores equal the reference implementation's
            (a float16 cache moves raw MaxSim sums by about 1e-3, more than the 1e-4 the scorer
            promises), and float16 when it computes in bfloat16/float16, whose vectors float16
            already holds (half the memory and disk). ``"float16"`` / ``"float32"`` force one.
        normalize: divide MaxSim by the number of query tokens, so scores are mean cosines in
            [-1, 1] (scale SIMILARITY; ranking is unchanged). ``False`` returns the raw sum, in
            [-query tokens, +query tokens], declared as an unbounded scale (LOGIT): the score
            colbert-ai and PyLate return.
        batch_size, max_batch_tokens: document encoding batches (length-sorted).
        layout: force ``"colbert"``, ``"pylate"`` or ``"plain"`` instead of detecting it.
        deadline, on_error, scheduler: how calls share the model, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        document_template: what the model reads of each candidate, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        compile: whether the model's transformer blocks are compiled at load, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        **load: how the checkpoint is fetched and built (``revision``, ``local_files_only``, ...),
            as for :class:`~rerankers_plugins.CrossEncoderScorer`.
    """

    renamed: ClassVar[Mapping[str, str]] = {"doc_length": "max_length"}

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: DTypeName = "auto",
        query_length: int | None = None,
        max_length: int | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = 512 * 2**20,
        cache_dtype: Literal["auto", "float16", "float32"] = "auto",
        normalize: bool = True,
        batch_size: int = 32,
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        layout: Layout | None = None,
        deadline: float | None = None,
        on_error: OnError = "raise",
        document_template: TemplateLike | None = None,
        scheduler: bool | Mapping[str, Any] = True,
        compile: CompileSetting = "auto",
        **load: Unpack[LoadKwargs],
    ) -> None:
        self._serve(deadline, on_error, scheduler, compile)
        self.document_template = as_template(document_template)
        _check_options(query_length, max_length, batch_size, layout, cache_dtype)
        self._torch = require("torch", "colbert")
        transformers = require("transformers", "colbert")
        ckpt = self._open(model, device, dtype, max_batch_tokens, load, extra="colbert")
        self.batch_size = batch_size
        self.normalize = normalize
        self.scale = ScoreScale.SIMILARITY if normalize else ScoreScale.LOGIT

        def load_files() -> tuple[Path, Any, Any]:
            root = ckpt.root()
            tok = transformers.AutoTokenizer.from_pretrained(str(root), **ckpt.options.tokenizer())
            hf_logging = transformers.utils.logging
            verbosity = hf_logging.get_verbosity()
            if (root / "artifact.metadata").is_file() or (layout or detect_layout(root)) == "colbert":
                # The encoder loads without `linear.weight`, which transformers reports as an
                # unexpected key; the projection is loaded separately, so the report is noise.
                hf_logging.set_verbosity_error()
            try:
                config = transformers.AutoConfig.from_pretrained(str(root), **ckpt.options.config())
                enc = transformers.AutoModel.from_pretrained(str(root), config=config, **ckpt.options.model())
            finally:
                hf_logging.set_verbosity(verbosity)
            return root, tok, enc

        root, self._tokenizer, encoder = ckpt.load("ColBERT", load_files, cls="ColBERTScorer")
        self._tokenizer_lock = ckpt.tokenizer_lock
        self.layout: Layout = layout or detect_layout(root)
        spec = load_spec(root, self._tokenizer, self.layout)
        self._spec = spec
        limit = Checkpoint.position_limit(encoder.config)
        default_doc = PLAIN_DOC_LENGTH if self.layout == "plain" else DEFAULT_DOC_LENGTH
        self.query_length = min(_first(query_length, spec.query_length, DEFAULT_QUERY_LENGTH), limit)
        self.max_length = min(_first(max_length, spec.doc_length, default_doc), limit)
        self._encoder = encoder.to(self.device, dtype=self.dtype).eval()
        spec.projection = [d.to(self.device, self.dtype) for d in spec.projection]
        self.dim = int(
            spec.projection[-1].linear.out_features if spec.projection else encoder.config.hidden_size
        )
        self.cache_dtype: CacheDType = resolve_cache_dtype(cache_dtype, self.dtype)
        self._special_ids = frozenset(int(i) for i in self._tokenizer.all_special_ids)
        self._doc_truncation = TruncationReport(f"ColBERTScorer({self.model!r}) documents")
        self._query_truncation = TruncationReport(
            f"ColBERTScorer({self.model!r}) queries", hint="Raise query_length to read longer queries."
        )
        key = model_key(
            root,
            ckpt.digest,
            self.layout,
            self.max_length,
            self.dim,
            str(self.dtype),
            self.cache_dtype,
            *load_settings(ckpt.options),
        )
        self.cache = DocumentEmbeddingCache(
            key, max_bytes=cache_bytes, directory=cache_dir, dtype=self.cache_dtype
        )
        logger.debug(
            "loaded ColBERT %s layout=%s dim=%d lengths=%d/%d on %s/%s",
            model,
            self.layout,
            self.dim,
            self.query_length,
            self.max_length,
            self.device,
            self.dtype,
        )
        self._accelerate(self._encoder)

    def __repr__(self) -> str:
        return (
            f"ColBERTScorer({self.model!r}, layout={self.layout!r}, dim={self.dim}, "
            f"query_length={self.query_length}, max_length={self.max_length}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r})"
        )

    # -- encoding ---------------------------------------------------------------------------------

    def _ids(
        self, texts: Sequence[str], marker: list[int], limit: int, report: TruncationReport
    ) -> list[list[int]]:
        """Token ids as the reference implementations build them: the tokenizer's own special
        tokens around the text, truncated so that the whole sequence fits ``limit``, and the marker
        inserted right after the first special token (PyLate's ``insert_prefix_token``; colbert-ai
        tokenizes ``". " + text`` and overwrites position 1, the same sequence)."""
        tok = self._tokenizer
        with self._tokenizer_lock:
            template = list(tok("", add_special_tokens=True)["input_ids"])  # e.g. [CLS] [SEP]
            room = max(limit - len(template) - len(marker), 1)
            raw = report.token_ids(tok, texts, room)  # capped at room + 1: tells who is truncated
        head, tail = template[:1], template[1:]
        report.check(sum(len(ids) > room for ids in raw), len(raw), limit)
        return [head + marker + ids[:room] + tail for ids in raw]

    def _forward(self, batch_ids: list[list[int]], attend: list[list[int]] | None = None) -> Any:
        torch = self._torch
        ids, mask = pad_right(batch_ids, self._tokenizer.pad_token_id or 0, attend)
        hidden = self._encoder(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        for dense in self._spec.projection:
            hidden = dense(hidden)
        return torch.nn.functional.normalize(hidden.float(), p=2, dim=-1)

    def _keep(self, ids: list[int], *, doc: bool) -> list[int]:
        spec = self._spec
        if not spec.keep_special:
            return [i for i, t in enumerate(ids) if t not in self._special_ids]
        if doc and spec.doc_skip_ids:
            return [i for i, t in enumerate(ids) if t not in spec.doc_skip_ids]
        return list(range(len(ids)))

    def _query_row(self, query: str) -> tuple[list[int], list[int]]:
        """The query's token ids and attention (expanded to ``query_length`` where the layout does)."""
        spec = self._spec
        ids = self._ids([query], spec.query_marker, self.query_length, self._query_truncation)[0]
        attend = [1] * len(ids)
        if spec.expand_query and len(ids) < self.query_length:
            extra = self.query_length - len(ids)
            tok = self._tokenizer
            # PyLate's fallback chain: [MASK] for encoders, EOS for decoders
            expansion_id = tok.mask_token_id if tok.mask_token_id is not None else tok.eos_token_id
            if expansion_id is None:
                raise BackendError(
                    f"{self.model!r}: query expansion needs a [MASK] (or EOS) token, the tokenizer has none"
                )
            ids = ids + [expansion_id] * extra
            attend = attend + [1 if spec.attend_expansion else 0] * extra
        return ids, attend

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        """Token vectors (float32, the kept positions) of one batch: ``(ids, attention)`` query rows
        or document id rows."""
        query = kind == "query"
        rows = [d[0] for d in data] if query else data
        with self._torch.inference_mode():
            vecs = self._forward(rows, [d[1] for d in data] if query else None)
            return [vecs[r, self._keep(ids, doc=not query)].detach() for r, ids in enumerate(rows)]

    def encode_query(self, query: str) -> Any:
        """``[m, dim]`` float32 query token vectors on the scorer's device."""
        return self._run_batch("query", [self._query_row(query)], [0])[0]

    def _document_rows(self, texts: Sequence[str]) -> list[list[int]]:
        return self._ids(texts, self._spec.doc_marker, self.max_length, self._doc_truncation)

    def encode_documents(self, texts: Sequence[str]) -> list[Any]:
        """``[n_i, dim]`` float32 token vectors for each text (no cache involved)."""
        if not texts:
            return []
        units = [Unit(ids, len(ids), "document") for ids in self._document_rows(texts)]
        return compute_units(units, self._run_batch, self.batch_size, self.max_batch_tokens)

    def index(self, texts: Sequence[str]) -> int:
        """Precompute and cache the vectors of ``texts`` (memory, and disk when ``cache_dir`` is set).

        Returns how many texts were encoded (the rest were cached already). Encodes in chunks so
        a corpus of any size never sits in memory as one padded tensor.
        """
        return self.cache.fill(texts, self.encode_documents, chunk=max(self.batch_size * 8, 256))

    # -- scoring ----------------------------------------------------------------------------------

    def score_settings(self) -> Mapping[str, Any]:
        return {"query_length": self.query_length, "cache_dtype": self.cache_dtype}

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        """The query's row and the rows of the non-empty documents not cached yet; MaxSim over
        their vectors and the cached ones (empty documents score 0)."""
        nonempty = [i for i, t in enumerate(texts) if t.strip()]
        keys, found, missing = self.cache.lookup([texts[i] for i in nonempty])
        q_ids, attend = self._query_row(query)
        units = [Unit((q_ids, attend), len(q_ids), "query")]
        if missing:
            units += [Unit(r, len(r), "document") for r in self._document_rows(list(missing.values()))]

        def finish(outputs: list[Any]) -> list[float]:
            vectors = self.cache.complete(keys, found, list(missing), outputs[1:])
            return self._maxsim(outputs[0], vectors, nonempty, len(texts))

        return Plan(units, finish)

    def _maxsim(self, q: Any, vectors: Sequence[Any], nonempty: Sequence[int], n: int) -> list[float]:
        scores = [0.0] * n
        chunk = 256
        with self._torch.inference_mode():
            for start in range(0, len(nonempty), chunk):
                part = vectors[start : start + chunk]
                docs, mask = pad_vectors([v.to(self.device) for v in part], dim=self.dim)
                values = maxsim(q, docs, doc_mask=mask, normalize=self.normalize).tolist()
                for i, v in zip(nonempty[start : start + chunk], values, strict=True):
                    scores[i] = float(v)
        return scores


def _first(*values: int | None) -> int:
    """The first value that is not None (the constructor's, the checkpoint's, the default)."""
    for v in values:
        if v is not None:
            return v
    raise AssertionError("a default length is always given")


def _check_options(
    query_length: int | None, max_length: int | None, batch_size: int, layout: Any, cache_dtype: Any
) -> None:
    """ConfigError for a constructor option out of range."""
    as_int(query_length, "query_length", minimum=4, allow_none=True)
    as_int(max_length, "max_length", minimum=4, allow_none=True)
    as_int(batch_size, "batch_size", minimum=1)
    if layout not in (None, "colbert", "pylate", "plain"):
        raise ConfigError(f"layout must be 'colbert', 'pylate', 'plain' or None, got {layout!r}")
    check_cache_dtype(cache_dtype)
