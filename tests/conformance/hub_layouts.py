"""Tiny random-weight checkpoints in the file layouts real Hub rerankers are published in.

Each builder writes what the real repository holds (config fields, tokenizer kind, sentence-transformers
files, chat templates), with 2 layers and hidden size 32, so that a scorer loads it through the same
path as the real model id. The tokenizers are trained here on a few hundred lines: byte-level BPE
where the real model has one (Qwen2/3, ModernBERT), a sentencepiece unigram model where the real model
has one (XLM-RoBERTa, Gemma).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny import TINY, WORDS

#: what the tokenizers are trained on: the test vocabulary, the answer words and the prompts' words
EXTRA = (
    "yes no Yes No 1 0 true false relevant Relevance instruction query document passage "
    "Given a web search query, retrieve relevant passages that answer the query. "
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no". '
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant. "
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant). "
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'. A: B: <Instruct>: <Query>: <Document>: "
    "<think> </think> Paris is the capital city of France. The cat sat on the mat."
)


def corpus() -> list[str]:
    lines = [" ".join(WORDS[i : i + 7]) for i in range(len(WORDS))]
    lines += [" ".join(reversed(WORDS[i : i + 5])).capitalize() + "." for i in range(len(WORDS))]
    # the answer words as whole tokens, as in the real vocabularies (a model answers "yes" after "\n\n")
    answers = ["yes\nno\nYes\nNo\n1\n0\ntrue\nfalse\n"] * 40
    return lines * 2 + [EXTRA] * 8 + answers


def bpe_tokenizer(specials: list[str], *, vocab_size: int = 420, **named: str) -> Any:
    """A byte-level BPE tokenizer (the kind Qwen2/Qwen3 and ModernBERT ship) trained on :func:`corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def unigram_tokenizer(
    specials: list[str], *, vocab_size: int = 300, prepend: str = "always", **named: str
) -> Any:
    """A sentencepiece-style unigram tokenizer (Metaspace, as XLM-R and Gemma ship) trained on
    :func:`corpus`; ``prepend="never"`` for Gemma's (no dummy prefix: "Yes" is "Yes", not "▁Yes")."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend)
    tok.decoder = decoders.Metaspace(prepend_scheme=prepend)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=named.get("unk_token", "<unk>")
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _tiny(cfg_cls: Any, **kw: Any) -> Any:
    base = {
        **TINY,
        "max_position_embeddings": 512,
        # wide random weights: scores spread over the candidates, so a wrong token moves them visibly
        "initializer_range": 0.3,
    }
    base.update(kw)
    return cfg_cls(**base)


def _save(model: Any, tokenizer: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


# -- causal LMs --------------------------------------------------------------------------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen_tokenizer(padding_side: str = "right") -> Any:
    """Qwen2/Qwen3's tokenizer shape: byte-level BPE, ``<|endoftext|>`` pads, ``<|im_end|>`` ends, no BOS."""
    tok = bpe_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = padding_side
    return tok


def _qwen3_config(tokenizer: Any, **kw: Any) -> Any:
    from transformers import Qwen3Config

    return _tiny(
        Qwen3Config,
        vocab_size=len(tokenizer),
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kw,
    )


#: the shape of Qwen3's own chat template (system / user / assistant / tool turns, a generation
#: prompt with an empty think block): what a conversion of a Qwen3 reranker keeps from its base
#: model. Any other role (sentence-transformers' "query" / "document") renders nothing.
QWEN3_CHAT_TEMPLATE = """\
{%- for message in messages -%}
{%- if message.role in ["system", "user", "assistant"] and message.content is string -%}
{{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" -}}
{%- elif message.role == "tool" -%}
{{- "<|im_start|>user\n<tool_response>\n" + message.content + "\n</tool_response><|im_end|>\n" -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- "<|im_start|>assistant\n<think>\n\n</think>\n\n" -}}
{%- endif -%}"""


def build_qwen3_causal(directory: Path, *, seed: int = 0) -> Path:
    """Qwen/Qwen3-Reranker-0.6B as published: a plain ``Qwen3ForCausalLM`` (tied embeddings), its
    tokenizer with left padding and Qwen3's own chat template (inline in tokenizer_config.json);
    no sentence-transformers files."""
    from transformers import Qwen3ForCausalLM

    tok = qwen_tokenizer("left")
    _seed(seed)
    _save(Qwen3ForCausalLM(_qwen3_config(tok)), tok, directory)
    _inline_chat_template(directory, QWEN3_CHAT_TEMPLATE)
    return directory


def _inline_chat_template(directory: Path, template: str) -> None:
    """Put ``template`` into tokenizer_config.json, where checkpoints saved before chat_template.jinja
    existed keep it."""
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    write_json(config_path, config)
    (directory / "chat_template.jinja").unlink(missing_ok=True)


def build_qwen2_causal(directory: Path, *, seed: int = 0) -> Path:
    """mixedbread-ai/mxbai-rerank-base-v2 as published: a plain ``Qwen2ForCausalLM``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen_tokenizer("right")
    cfg = _tiny(
        Qwen2Config,
        vocab_size=len(tok),
        num_key_value_heads=1,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    _seed(seed)
    return _save(Qwen2ForCausalLM(cfg), tok, directory)


def build_gemma_causal(directory: Path, *, seed: int = 0) -> Path:
    """BAAI/bge-reranker-v2-gemma as published: ``GemmaForCausalLM``, a sentencepiece tokenizer with
    ``<bos>`` / ``<eos>`` / ``<pad>``."""
    from transformers import GemmaConfig, GemmaForCausalLM

    tok = unigram_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>"],
        prepend="never",
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    tok.padding_side = "left"
    cfg = _tiny(
        GemmaConfig,
        vocab_size=len(tok),
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    _seed(seed)
    return _save(GemmaForCausalLM(cfg), tok, directory)


#: the shape of the chat template sentence-transformers 6 rerankers ship (``chat_template.jinja``):
#: the instruction in a system message (the default prompt), the pair in ``query`` / ``document`` roles
QWEN3_RERANK_TEMPLATE = """\
{%- set instruction = messages | selectattr("role", "eq", "system") | map(attribute="content") | first | default("Given a web search query, retrieve relevant passages that answer the query") -%}
{%- set query_text = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}
{%- set document_text = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}
<|im_start|>system
Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>
<|im_start|>user
<Instruct>: {{ instruction }}
<Query>: {{ query_text }}
<Document>: {{ document_text }}<|im_end|>
<|im_start|>assistant
<think>

</think>

"""


def build_st_logit_score(directory: Path, *, seed: int = 0, prompts: dict[str, str] | None = None) -> Path:
    """A causal-LM reranker in the layout sentence-transformers >= 5.4 writes (Qwen3-Reranker-STv54,
    zerank-2): ``modules.json`` with a ``text-generation`` Transformer and ``1_LogitScore`` (the "yes"
    and "no" token ids), ``chat_template.jinja``; written by sentence-transformers itself."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    raw = build_qwen3_causal(directory.with_name(directory.name + "-raw"), seed=seed)
    tok_cfg = raw / "tokenizer_config.json"
    (raw / "chat_template.jinja").write_text(QWEN3_RERANK_TEMPLATE, encoding="utf-8")
    assert tok_cfg.is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(raw)
    yes = tok.convert_tokens_to_ids("yes")
    no = tok.convert_tokens_to_ids("no")
    assert yes != tok.unk_token_id and no != tok.unk_token_id
    body = Transformer(str(raw), transformer_task="text-generation")
    model = CrossEncoder(modules=[body, LogitScore(true_token_id=yes, false_token_id=no)], prompts=prompts)
    model.save_pretrained(str(directory))
    return directory


# -- sequence classification ------------------------------------------------------------------


def build_qwen3_seq_cls(
    directory: Path,
    *,
    seed: int = 0,
    chat_template: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """``Qwen3ForSequenceClassification`` with one label: the converted Qwen3-Reranker layout
    (tomaarsen/Qwen3-Reranker-0.6B-seq-cls: config, weights and tokenizer files, its
    tokenizer_config.json carrying Qwen3's own chat template as the conversion kept it), or with
    ``chat_template=True`` the sentence-transformers 6 layout (Qwen3-Reranker-0.6B-seq-cls-STv6:
    ``chat_template.jinja`` with query / document roles, ``modules.json``,
    ``config_sentence_transformers.json``)."""
    from transformers import Qwen3ForSequenceClassification

    tok = qwen_tokenizer("right")
    _seed(seed)
    model = Qwen3ForSequenceClassification(_qwen3_config(tok, num_labels=1))
    if not chat_template and prompts is None:
        _save(model, tok, directory)
        _inline_chat_template(directory, QWEN3_CHAT_TEMPLATE)  # as in the converted repository
        return directory
    raw = _save(model, tok, directory.with_name(directory.name + "-raw"))
    if chat_template:
        (raw / "chat_template.jinja").write_text(QWEN3_RERANK_TEMPLATE, encoding="utf-8")
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(raw), prompts=prompts, default_prompt_name=default_prompt_name)
    ce.save_pretrained(str(directory))
    return directory


def build_xlmr_cross_encoder(directory: Path, *, seed: int = 0, num_labels: int = 1) -> Path:
    """BAAI/bge-reranker-v2-m3 / bge-reranker-base: ``XLMRobertaForSequenceClassification``, a
    sentencepiece tokenizer with ``<s>`` / ``</s>`` / ``<pad>`` (id 1) / ``<mask>``, position ids offset
    by the padding index."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tok = unigram_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    from tokenizers import processors

    backend = tok.backend_tokenizer
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", tok.convert_tokens_to_ids("</s>")), ("<s>", tok.convert_tokens_to_ids("<s>"))
    )
    cfg = _tiny(
        XLMRobertaConfig,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
        num_labels=num_labels,
        max_position_embeddings=514,
    )
    _seed(seed)
    return _save(XLMRobertaForSequenceClassification(cfg), tok, directory)


def build_modernbert_cross_encoder(directory: Path, *, seed: int = 0) -> Path:
    """Alibaba-NLP/gte-reranker-modernbert-base: ``ModernBertForSequenceClassification`` (one label),
    a byte-level BPE tokenizer with ``[CLS]`` / ``[SEP]`` / ``[PAD]`` / ``[MASK]``, no token type ids."""
    from tokenizers import processors
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    tok = bpe_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    cls, sep = tok.convert_tokens_to_ids("[CLS]"), tok.convert_tokens_to_ids("[SEP]")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.model_input_names = ["input_ids", "attention_mask"]
    cfg = _tiny(
        ModernBertConfig,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        cls_token_id=cls,
        sep_token_id=sep,
        bos_token_id=cls,
        eos_token_id=sep,
        num_labels=1,
        global_attn_every_n_layers=2,
        local_attention=16,
    )
    _seed(seed)
    return _save(ModernBertForSequenceClassification(cfg), tok, directory)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
