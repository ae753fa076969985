"""Sequence-to-sequence rerankers: MonoT5 and RankT5 over any T5-style checkpoint.

Both read the decoder's first step for the prompt ``Query: ... Document: ...``:

``monot5``  the prompt ends with ``Relevant:`` and the model was trained to answer ``true`` or
            ``false``; the score is the softmax probability of "true" over those two token
            logits (scale PROBABILITY), as the published monoT5 checkpoints are scored.
``rankt5``  the model was trained so that one vocabulary entry's logit at that step *is* the
            relevance score (``<extra_id_10>`` in the published RankT5 checkpoints); the score is
            that raw logit (scale LOGIT).

The model and tokenizer load through transformers (Hub id or local directory, the same errors as
the cross-encoder). Each call tokenizes its pairs once, truncates only the document when a pair is
longer than ``max_length`` (the query and the prompt words are kept, so ``Relevant:`` is never cut
off), sorts pairs by token length before batching, and upcasts logits to float32.

Only a checkpoint whose files hold the whole encoder-decoder is scored: an encoder-only T5 (a
``T5EncoderModel`` export, or a config without ``is_encoder_decoder`` over encoder weights) would
load with a randomly initialised decoder, and is refused, naming what scores such a model. The check
reads the weight names (the safetensors headers or the shard index) before loading and the
loader's missing keys after it, so ``pytorch_model.bin``-only checkpoints are covered too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Unpack

from rerankers_plugins._optional import require
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._compile import CompileSetting
from rerankers_plugins.scorers._device import DTypeName, resolve_dtype
from rerankers_plugins.scorers._hf import LoadKwargs
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._scheduler import Plan, Unit
from rerankers_plugins.scorers._tokens import TruncationReport, pad_right
from rerankers_plugins.templates import TemplateLike, as_template
from rerankers_plugins.types import ScoreScale

__all__ = ["TEMPLATES", "Seq2SeqScorer", "Variant"]

logger = logging.getLogger(__name__)

Variant = Literal["monot5", "rankt5"]

#: the prompt each published family was trained on
TEMPLATES: dict[str, str] = {
    "monot5": "Query: {query} Document: {document} Relevant:",
    "rankt5": "Query: {query} Document: {document}",
}


_ENCODER_ONLY_HINT = (
    "Seq2SeqScorer reads the decoder's first step, so it needs a full T5ForConditionalGeneration "
    "checkpoint such as castorini/monot5-base-msmarco or Soyoung97/RankT5-base. An encoder-only T5 "
    "is an embedding model: score it with BiEncoderScorer (a sentence-transformers export) or "
    "ColBERTScorer, or fine-tune a MonoT5/RankT5 reranker from the full T5 checkpoint"
)


def _weight_names(path: str) -> set[str] | None:
    """The parameter names a local checkpoint directory stores, read from its shard index
    (``*.index.json``) or its safetensors headers without loading a tensor; None where neither is
    there (a Hub id, or ``pytorch_model.bin`` alone: the loader's missing keys decide then)."""
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        return None
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        file = os.path.join(root, index)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as fh:
                return set(json.load(fh).get("weight_map", {}))
    file = os.path.join(root, "model.safetensors")
    if os.path.isfile(file):
        safetensors = require("safetensors", "seq2seq")  # a dependency of transformers

        with safetensors.safe_open(file, framework="pt") as fh:
            return set(fh.keys())
    return None


def _template_parts(template: str) -> tuple[str, str, str, bool]:
    """``template`` split at its two placeholders: (before, between, after, query first)."""
    if template.count("{query}") != 1 or template.count("{document}") != 1:
        raise ConfigError(f"template must hold {{query}} and {{document}} once each, got {template!r}")
    query_first = template.index("{query}") < template.index("{document}")
    first, second = ("{query}", "{document}") if query_first else ("{document}", "{query}")
    before, rest = template.split(first)
    between, after = rest.split(second)
    return before, between, after, query_first


class Seq2SeqScorer(LocalScorer):
    """Score (query, text) pairs with a MonoT5 or RankT5 model.

    Args:
        model: a Hub id (``"castorini/monot5-base-msmarco"``) or a local directory.
        variant: ``"monot5"`` (P("true"), scale PROBABILITY) or ``"rankt5"`` (the score token's
            logit, scale LOGIT).
        true_token, false_token: the MonoT5 answer words (one token each with this tokenizer),
            or their token ids; checkpoints trained with other words (``"yes"``/``"no"``) set them.
        score_token: the RankT5 scoring token (a token string or id).
        template: the prompt, with ``{query}`` and ``{document}``; default the variant's published
            one. The text around the placeholders is tokenized word by word, so keep whitespace
            around them (as the published prompts do).
        device: ``None`` picks CUDA when present, else CPU.
        dtype: ``"auto"`` (bfloat16 where the hardware is fast at it, else float32), ``"float32"``
            or ``"bfloat16"``. float16 is refused: T5's feed-forward activations overflow it.
        max_length: encoder tokens per pair; longer documents are cut (warned once per scorer).
        query_length: at most this many query tokens are kept (the rest of the window is the
            document's).
        batch_size, max_batch_tokens: as for :class:`~rerankers_plugins.CrossEncoderScorer`.
        deadline, on_error, scheduler: how calls share the model, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        document_template: what the model reads of each candidate, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        compile: whether the model's transformer blocks are compiled at load, as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.
        **load: how the checkpoint is fetched and built (``revision``, ``trust_remote_code``, ...),
            as for :class:`~rerankers_plugins.CrossEncoderScorer`.
    """

    renamed: ClassVar[Mapping[str, str]] = {"max_query_length": "query_length"}

    def __init__(
        self,
        model: str,
        *,
        variant: Variant = "monot5",
        true_token: str | int = "true",
        false_token: str | int = "false",
        score_token: str | int = "<extra_id_10>",
        template: str | None = None,
        device: str | None = None,
        dtype: DTypeName = "auto",
        max_length: int = 512,
        query_length: int = 64,
        batch_size: int = 16,
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
        if variant not in TEMPLATES:
            raise ConfigError(f"variant must be 'monot5' or 'rankt5', got {variant!r}")
        as_int(max_length, "max_length", minimum=8)
        as_int(query_length, "query_length", minimum=1)
        as_int(batch_size, "batch_size", minimum=1)
        self._torch = require("torch", "seq2seq")
        transformers = require("transformers", "seq2seq")
        if dtype == "float16":
            raise ConfigError(
                'dtype="float16" is not supported for T5 models (their activations overflow it); '
                'use "bfloat16" or "float32"'
            )
        ckpt = self._open(
            model, device, dtype, max_batch_tokens, load, extra="seq2seq", precision=self._precision
        )
        self.variant: Variant = variant
        self.scale = ScoreScale.PROBABILITY if variant == "monot5" else ScoreScale.LOGIT
        self.template = template if template is not None else TEMPLATES[variant]
        self._before, self._between, self._after, self._query_first = _template_parts(self.template)
        self.batch_size = batch_size
        path = ckpt.path
        config = ckpt.load(
            "seq2seq",
            lambda: transformers.AutoConfig.from_pretrained(path, **ckpt.options.config()),
            cls="Seq2SeqScorer",
        )
        _check_checkpoint(model, path, config)
        self._tokenizer, (net, info) = ckpt.load(
            "seq2seq",
            lambda: (
                transformers.AutoTokenizer.from_pretrained(path, **ckpt.options.tokenizer()),
                transformers.AutoModelForSeq2SeqLM.from_pretrained(
                    path, config=config, output_loading_info=True, **ckpt.options.model()
                ),
            ),
            cls="Seq2SeqScorer",
        )
        self._tokenizer_lock = ckpt.tokenizer_lock  # see _encode
        _check_loaded(model, info)
        self._model = net.to(self.device, dtype=self.dtype).eval()
        limit = int(getattr(self._tokenizer, "model_max_length", 0) or 0)
        self.max_length = max_length if not 0 < limit < max_length else limit
        self.query_length = query_length
        start = self._model.config.decoder_start_token_id
        if start is None:
            start = self._model.config.pad_token_id
        if start is None:
            raise ConfigError(f"{model!r} declares no decoder_start_token_id (nor a pad token)")
        self._start = int(start)
        self._pad = int(self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0)
        self._head, self._tail = self._special_frame()
        self._fixed = [self._words(part) for part in (self._before, self._between, self._after)]
        self._ids: tuple[int, ...] = self._answer_ids(true_token, false_token, score_token)
        self._truncation = TruncationReport(f"Seq2SeqScorer({self.model!r})")
        logger.debug("loaded %s model %s on %s as %s", variant, model, self.device, self.dtype)
        self._accelerate(self._model)

    def _precision(self, dtype: str, device: str) -> Any:
        """:func:`resolve_dtype`, but float32 where it would pick float16 ("auto" on a CUDA device
        without bfloat16): T5's activations overflow float16."""
        resolved = resolve_dtype(dtype, device)
        return self._torch.float32 if resolved == self._torch.float16 else resolved

    def _answer_ids(
        self, true_token: str | int, false_token: str | int, score_token: str | int
    ) -> tuple[int, ...]:
        """The decoder logits a score is read from: MonoT5's (true, false), RankT5's score token."""
        if self.variant == "monot5":
            self.true_id = self._token_id(true_token, "true_token")
            self.false_id = self._token_id(false_token, "false_token")
            if self.true_id == self.false_id:
                raise ConfigError(f"true_token and false_token are the same token (id {self.true_id})")
            return (self.true_id, self.false_id)
        self.score_id = self._token_id(score_token, "score_token")
        return (self.score_id,)

    def __repr__(self) -> str:
        return (
            f"Seq2SeqScorer({self.model!r}, variant={self.variant!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, scale={self.scale.value})"
        )

    # -- tokenization -----------------------------------------------------------------------------

    def _words(self, text: str) -> list[int]:
        text = text.strip()
        if not text:
            return []
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts around a text (T5: nothing before, ``</s>`` after)."""
        plain = list(self._tokenizer("x", add_special_tokens=False)["input_ids"])
        full = list(self._tokenizer("x")["input_ids"])
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i], full[i + len(plain) :]
        return [], []

    def _token_id(self, token: str | int, what: str) -> int:
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            raise ConfigError(f"{what} must be a token string or id, got {token!r}")
        size = len(self._tokenizer)
        if isinstance(token, int):
            if not 0 <= token < size:
                raise ConfigError(f"{what} id {token} is outside the vocabulary (size {size})")
            return token
        # As a word first: in a sentencepiece vocabulary the model answers "▁true" (a word start),
        # while a bare "true" entry, where one exists, is a piece inside a word.
        ids = self._words(token)
        if len(ids) == 1 and ids[0] != self._tokenizer.unk_token_id:
            return ids[0]
        tid = self._tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != self._tokenizer.unk_token_id:
            return tid
        raise ConfigError(
            f"{what} {token!r} is not one token for this tokenizer (it gives {ids}); pass a word "
            "that is a single token, or the token id"
        )

    def _encode(self, query: str, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids of every prompt; documents are cut to fit ``max_length``. Returns the ids and
        how many documents were cut."""
        before, between, after = self._fixed
        frame = len(self._head) + len(before) + len(between) + len(after) + len(self._tail)
        # a fast tokenizer's truncation settings are one mutable object that each call with other
        # settings rewrites: concurrent calls are cut at another call's length (or raise "Already
        # borrowed"), so the tokenizer calls hold this lock
        with self._tokenizer_lock:
            # the query keeps at most query_length tokens and always leaves the document one
            q = self._words(query)[: max(0, min(self.query_length, self.max_length - frame - 1))]
            room = max(self.max_length - frame - len(q), 1)
            docs = self._truncation.token_ids(self._tokenizer, texts, room)
        cut = sum(len(d) > room for d in docs)
        rows = []
        for d in docs:
            first, second = (q, d[:room]) if self._query_first else (d[:room], q)
            rows.append(self._head + before + first + between + second + after + self._tail)
        return rows, cut

    # -- scoring ----------------------------------------------------------------------------------

    def score_settings(self) -> Mapping[str, Any]:
        return {
            "variant": self.variant,
            "template": self.template,
            "tokens": list(self._ids),
            "query_length": self.query_length,
        }

    def _forward(self, rows: list[list[int]]) -> list[float]:
        torch = self._torch
        ids, mask = pad_right(rows, self._pad)
        start = torch.full((len(rows), 1), self._start, dtype=torch.long)
        with torch.inference_mode():
            out = self._model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                decoder_input_ids=start.to(self.device),
                use_cache=False,
            )
            logits = out.logits[:, 0, list(self._ids)].float()
            values = torch.softmax(logits, dim=-1)[:, 0] if self.variant == "monot5" else logits[:, 0]
        return [float(v) for v in values.cpu().tolist()]

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        rows, cut = self._encode(query, texts)
        self._truncation.check(cut, len(rows), self.max_length)
        return Plan([Unit(r, len(r)) for r in rows])

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        return self._forward(data)


def _check_checkpoint(model: str, path: str, config: Any) -> None:
    """ConfigError for a checkpoint Seq2SeqScorer cannot score as its authors do: encoder-only
    T5, a model that is not encoder-decoder, or weight files without the decoder."""
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("EncoderModel") for a in architectures) or (
        config.model_type in ("t5", "mt5", "umt5") and not getattr(config, "is_encoder_decoder", False)
    ):
        raise ConfigError(
            f"{model!r} is an encoder-only {config.model_type} checkpoint (architectures "
            f"{architectures}): it has no decoder to score with. {_ENCODER_ONLY_HINT}"
        )
    if not getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"{model!r} is not an encoder-decoder model (model_type {config.model_type!r}): "
            "Seq2SeqScorer needs a T5-style checkpoint such as castorini/monot5-base-msmarco; "
            "for a BERT-style cross-encoder use CrossEncoderScorer"
        )
    names = _weight_names(path)
    if names is not None and not any(n.startswith("decoder.") for n in names):
        raise ConfigError(
            f"{model!r} holds no decoder weights (its weight files store only "
            f"{sorted({n.split('.')[0] for n in names})}); loaded as an encoder-decoder its decoder "
            f"would be randomly initialised and every score random. {_ENCODER_ONLY_HINT}"
        )


def _check_loaded(model: str, info: Mapping[str, Any]) -> None:
    """ConfigError where transformers initialised weights at random (every score would be)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # the decoder, or the LM head a checkpoint with tie_word_embeddings=false stores apart
        decoder = any(n.startswith(("decoder.", "lm_head.")) for n in missing)
        raise ConfigError(
            f"{model!r} lacks {len(missing)} {'decoder ' if decoder else ''}weights (e.g. "
            f"{missing[:3]}): transformers would initialise them at random, so every score would "
            "be random. "
            + (_ENCODER_ONLY_HINT if decoder else "Re-save the complete model with save_pretrained")
        )
