"""Causal-LM rerankers: a decoder reads one prompt per (query, document) and the relevance score is
read off the next-token logits at the last position (``"yes"`` vs ``"no"``, ``"1"`` vs ``"0"``, or
``"Yes"`` alone).

Two pieces, used by :class:`~rerankers_plugins.scorers.cross_encoder.CrossEncoderScorer`:

* :data:`PROMPT_FORMATS`: the token layout each model family's authors publish, reproduced token
  for token (the model card's reference code, cited per format), for checkpoints published as a
  plain ``*ForCausalLM`` (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma). Checkpoints in
  sentence-transformers' own layout (a ``LogitScore`` module and a chat template) are tokenized by
  sentence-transformers instead.
* :class:`CausalLogits`: runs the decoder over those token rows. Every prompt of one call starts
  with the same tokens (system text, instruction, query): that common prefix is run once, its
  key/value cache reused by every candidate, so each candidate pays only for its own tokens.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.batching import length_sorted_batches, restore_order

__all__ = [
    "KNOWN_CAUSAL_RERANKERS",
    "PROMPT_FORMATS",
    "CausalLogits",
    "PromptFormat",
    "common_prefix_length",
]


def _ids(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    """Token ids of ``text`` without special tokens, cut to ``max_length`` (the references'
    ``tokenizer(text, add_special_tokens=False, max_length=..., truncation=True)``)."""
    if max_length is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    out = tokenizer(text, add_special_tokens=False, max_length=max(max_length, 0), truncation=True)
    return list(out["input_ids"])


def _single_token(tokenizer: Any, word: str, owner: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(word)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
        return tid
    ids = _ids(tokenizer, word)
    if not ids:
        raise ConfigError(f"{owner}: the answer word {word!r} is not in this tokenizer's vocabulary")
    return ids[0]


@dataclass(frozen=True)
class PromptFormat:
    """One family's published prompt: how a (query, document) pair becomes token ids, and which
    next-token logits make the score (``true`` minus ``false``, or ``true`` alone)."""

    name: str
    true_word: str
    false_word: str | None
    default_instruction: str | None
    default_max_length: int
    #: ``build(tokenizer, query, docs, instruction, max_length)``: one token row per document; the
    #: template's fixed pieces and the query are tokenized once per call
    build: Callable[[Any, str, Sequence[str], str | None, int], list[list[int]]]
    source: str
    #: how the reference finds the answer tokens: ``"vocab"`` (``convert_tokens_to_ids(word)``) or
    #: ``"text"`` (the first id of ``tokenizer(word, add_special_tokens=False)``)
    lookup: str = "vocab"
    #: for a sequence-classification conversion of the family (its yes/no head folded into one
    #: label): the model card's ``(query text, document text)`` pair, ``pair(query, document,
    #: instruction)``, tokenized as a plain pair; None where no conversion publishes one
    pair: Callable[[str, str, str], tuple[str, str]] | None = None
    #: the architectures such a conversion declares
    pair_architectures: tuple[str, ...] = ()

    def answer_ids(self, tokenizer: Any) -> tuple[int, int | None]:
        owner = f"prompt_format={self.name!r}"

        def find(word: str) -> int:
            if self.lookup == "text":
                ids = _ids(tokenizer, word)
                if not ids:
                    raise ConfigError(f"{owner}: the answer word {word!r} tokenizes to nothing")
                return ids[0]
            return _single_token(tokenizer, word, owner)

        return find(self.true_word), None if self.false_word is None else find(self.false_word)


# -- Qwen3-Reranker ------------------------------------------------------------------------------
_QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _qwen3(
    tokenizer: Any, query: str, docs: Sequence[str], instruction: str | None, max_length: int
) -> list[list[int]]:
    # Qwen/Qwen3-Reranker-0.6B model card (transformers usage): prefix and suffix tokenized apart,
    # the formatted middle truncated to what they leave of max_length.
    prefix, suffix = _ids(tokenizer, _QWEN3_PREFIX), _ids(tokenizer, _QWEN3_SUFFIX)
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(
            f"max_length={max_length} leaves no room for the pair: the qwen3 prompt's own tokens take "
            f"{len(prefix) + len(suffix)}"
        )
    middles = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in docs]
    enc = tokenizer(middles, truncation="longest_first", max_length=room, return_attention_mask=False)
    return [prefix + list(ids) + suffix for ids in enc["input_ids"]]


def _qwen3_pair(query: str, document: str, instruction: str) -> tuple[str, str]:
    # tomaarsen/Qwen3-Reranker-0.6B-seq-cls model card: format_queries / format_document, the pair
    # then scored by CrossEncoder.predict (the tokenizer's plain pair, truncated longest-first)
    return (
        f"{_QWEN3_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n",
        f"<Document>: {document}{_QWEN3_SUFFIX}",
    )


# -- mxbai-rerank-v2 -----------------------------------------------------------------------------
_MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
_MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)


def _mxbai_v2(
    tokenizer: Any, query: str, docs: Sequence[str], instruction: str | None, max_length: int
) -> list[list[int]]:
    # mixedbread-ai/mxbai-rerank, mxbai_rerank/mxbai_rerank_v2.py (MxbaiRerankV2.prepare_inputs)
    prefix, suffix = _ids(tokenizer, _MXBAI_PREFIX), _ids(tokenizer, _MXBAI_SUFFIX)
    task, sep = _ids(tokenizer, _MXBAI_TASK), _ids(tokenizer, "\n")
    model_max = min(int(getattr(tokenizer, "model_max_length", max_length) or max_length), 10**9)
    # the template's own tokens never push a prompt past the model's limit
    limit = min(max_length, model_max - len(prefix) - len(task) - len(suffix) - len(sep))
    query_text = f"query: {query}"
    if instruction:
        query_text = f"instruction: {instruction}\n{query_text}"
    q = _ids(tokenizer, query_text, limit * 3 // 4)
    rows = []
    for doc in docs:
        d = _ids(tokenizer, f"document: {doc}", min(model_max - len(q), limit))
        body = q + (sep + d)[: max(limit - len(q), 0)]  # prepare_for_model(truncation="only_second")
        rows.append(prefix + body + sep + task + suffix)
    return rows


# -- bge-reranker-v2-gemma -----------------------------------------------------------------------
_BGE_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def _bge_gemma(
    tokenizer: Any, query: str, docs: Sequence[str], instruction: str | None, max_length: int
) -> list[list[int]]:
    # BAAI/bge-reranker-v2-gemma model card (get_inputs), FlagEmbedding's FlagLLMReranker
    sep, prompt = _ids(tokenizer, "\n"), _ids(tokenizer, instruction or _BGE_PROMPT)
    q = [tokenizer.bos_token_id, *_ids(tokenizer, f"A: {query}", max_length * 3 // 4)]
    rows = []
    for doc in docs:
        d = sep + _ids(tokenizer, f"B: {doc}", max_length)
        rows.append(q + d[: max(max_length - len(q), 0)] + sep + prompt)
    return rows


PROMPT_FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        PromptFormat(
            "qwen3",
            "yes",
            "no",
            "Given a web search query, retrieve relevant passages that answer the query",
            8192,
            _qwen3,
            "Qwen/Qwen3-Reranker model card",
            pair=_qwen3_pair,
            pair_architectures=("Qwen3ForSequenceClassification",),
        ),
        PromptFormat(
            "mxbai-v2", "1", "0", None, 8192, _mxbai_v2, "mixedbread-ai/mxbai-rerank (MxbaiRerankV2)"
        ),
        PromptFormat(
            "bge-gemma", "Yes", None, _BGE_PROMPT, 1024, _bge_gemma, "BAAI/bge-reranker-v2-gemma model card"
        ),
    )
}

#: Hub ids whose prompt their authors publish (exact ids, never a substring guess): plain causal LMs,
#: and sequence-classification conversions whose model card formats the pair (scored through the
#: classification head); any other such checkpoint names its format with ``prompt_format=``
KNOWN_CAUSAL_RERANKERS: dict[str, str] = {
    "tomaarsen/Qwen3-Reranker-0.6B-seq-cls": "qwen3",
    "Qwen/Qwen3-Reranker-0.6B": "qwen3",
    "Qwen/Qwen3-Reranker-4B": "qwen3",
    "Qwen/Qwen3-Reranker-8B": "qwen3",
    "mixedbread-ai/mxbai-rerank-base-v2": "mxbai-v2",
    "mixedbread-ai/mxbai-rerank-large-v2": "mxbai-v2",
    "BAAI/bge-reranker-v2-gemma": "bge-gemma",
}


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own.

    >>> common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> common_prefix_length([[7, 8], [7, 8]])
    1
    >>> common_prefix_length([[1, 2]])
    1
    """
    if not rows:
        return 0
    first, shortest = rows[0], min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == first[n] for r in rows):
        n += 1
    return n


#: a shared prefix shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 8


class CausalLogits:
    """Relevance logits of a causal LM at each token row's last position.

    ``score(rows)`` returns ``logit[true] - logit[false]`` (or ``logit[true]`` when there is no
    false token) per row, in row order, as float32. With ``reuse_prefix`` the rows' common prefix
    runs once and its key/value cache is expanded over each batch; otherwise rows are left-padded
    and run whole (the references' own way).
    """

    def __init__(
        self,
        model: Any,
        *,
        true_id: int,
        false_id: int | None,
        pad_id: int,
        device: str,
        batch_size: int,
        max_batch_tokens: int | None,
        reuse_prefix: bool = True,
    ) -> None:
        self._torch = require("torch", "cross-encoder")
        self.model = model
        self.true_id = true_id
        self.false_id = false_id
        self.pad_id = pad_id
        self.device = device
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.reuse_prefix = reuse_prefix
        # transformers 5.x names the key/value cache ``cache``; earlier releases ``past_key_values``
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _answer(self, logits: Any) -> list[float]:
        """``[B, V]`` last-position logits -> the score per row (float32)."""
        logits = logits.float()
        out = logits[:, self.true_id]
        if self.false_id is not None:
            out = out - logits[:, self.false_id]
        return [float(x) for x in out.tolist()]

    def score(self, rows: Sequence[Sequence[int]]) -> list[float]:
        if not rows:
            return []
        shared = common_prefix_length(rows) if self.reuse_prefix and len(rows) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            return self._whole(rows)
        return self._with_prefix(rows, shared)

    def _whole(self, rows: Sequence[Sequence[int]]) -> list[float]:
        torch = self._torch
        batches = length_sorted_batches([len(r) for r in rows], self.batch_size, self.max_batch_tokens)
        out: list[float] = []
        with torch.inference_mode():
            for batch in batches:
                width = max(len(rows[i]) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    n = len(rows[i])
                    ids[r, width - n :] = torch.tensor(list(rows[i]), dtype=torch.long)
                    mask[r, width - n :] = 1
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), logits_to_keep=1
                ).logits[:, -1]
                out.extend(self._answer(logits))
        return restore_order(batches, out)

    def _with_prefix(self, rows: Sequence[Sequence[int]], shared: int) -> list[float]:
        torch = self._torch
        prefix = torch.tensor([list(rows[0][:shared])], dtype=torch.long, device=self.device)
        tails = [list(r[shared:]) for r in rows]
        batches = length_sorted_batches([len(t) for t in tails], self.batch_size, self.max_batch_tokens)
        out: list[float] = []
        with torch.inference_mode():
            first = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            cache = first[self._cache_arg] if self._cache_arg in first else first["past_key_values"]
            for batch in batches:
                width = max(len(tails[i]) for i in batch)
                # tails left-padded after the prefix: every row's last column is its own last token;
                # positions continue the prefix's, pads are masked out
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
                mask[:, :shared] = 1
                pos = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    n = len(tails[i])
                    ids[r, width - n :] = torch.tensor(tails[i], dtype=torch.long)
                    mask[r, shared + width - n :] = 1
                    pos[r, width - n :] = torch.arange(shared, shared + n)
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
                logits = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=pos.to(self.device),
                    use_cache=True,
                    **{self._cache_arg: past},
                    logits_to_keep=1,
                ).logits[:, -1]
                out.extend(self._answer(logits))
        return restore_order(batches, out)
