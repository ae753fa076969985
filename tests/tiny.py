"""Tiny BERT checkpoints built at test time: the same loading path as a user's model id, no Hub."""

from __future__ import annotations

from pathlib import Path

#: the dimensions of every tiny test model (BERT, ModernBERT, Qwen, T5 alike): 2 layers, hidden 32,
#: 2 heads, feed-forward 64; each builder adds what its family needs
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "is",
    "are",
    "was",
    "for",
    "on",
    "with",
    "by",
    "and",
    "or",
    "not",
    "what",
    "how",
    "why",
    "who",
    "which",
    "does",
    "do",
    "cat",
    "cats",
    "dog",
    "dogs",
    "sat",
    "mat",
    "fish",
    "water",
    "river",
    "bank",
    "money",
    "loan",
    "rate",
    "interest",
    "capital",
    "paris",
    "france",
    "berlin",
    "germany",
    "city",
    "population",
    "people",
    "live",
    "museum",
    "apple",
    "red",
    "banana",
    "fruit",
    "pie",
    "day",
    "tree",
    "green",
    "protein",
    "cell",
    "cells",
    "gene",
    "genes",
    "cancer",
    "risk",
    "vitamin",
    "blood",
    "brain",
    "heart",
    "study",
    "patients",
    "effect",
    "reranking",
    "reranker",
    "search",
    "query",
    "document",
    "documents",
    "model",
    "models",
    "fast",
    "slow",
    "retrieval",
    "score",
]


def write_vocab(path: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = specials + chars + pieces + [w for w in dict.fromkeys(WORDS)]
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def _config(vocab_size: int, **kw: object):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        **TINY,
        max_position_embeddings=128,
        initializer_range=0.2,
        **kw,
    )


def _tokenizer(directory: Path, max_len: int):
    from transformers import BertTokenizerFast

    write_vocab(directory / "vocab.txt")
    # from_pretrained on a directory holding only vocab.txt works across transformers versions
    # (the constructor's vocab argument changed name between 4.x and 5.x).
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True, model_max_length=max_len)


def build_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0, max_len: int = 128) -> Path:
    """A 2-layer, hidden-32 BertForSequenceClassification saved as a cross-encoder checkpoint."""
    import torch
    from transformers import BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(directory, max_len)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(_config(len(tok), num_labels=num_labels))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_encoder(directory: Path, *, seed: int = 0, max_len: int = 128) -> Path:
    """A 2-layer, hidden-32 BertModel (no head): the base a cross-encoder is trained from."""
    import torch
    from transformers import BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(directory, max_len)
    torch.manual_seed(seed)
    config = _config(len(tok))
    config.architectures = ["BertModel"]
    BertModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_bi_encoder(directory: Path, *, seed: int = 0, max_len: int = 128) -> Path:
    """A 2-layer, hidden-32 BERT with mean pooling, saved as a sentence-transformers model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertModel

    raw = directory / "_hf"
    raw.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(raw, max_len)
    torch.manual_seed(seed)
    BertModel(_config(len(tok))).save_pretrained(raw)
    tok.save_pretrained(raw)
    transformer = modules.Transformer(str(raw), max_seq_length=max_len)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(directory / "st"))
    return directory / "st"


def _bert_with_markers(directory: Path, seed: int, max_len: int, extra_tokens: list[str] | None = None):
    import string

    import torch
    from transformers import BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(directory / "vocab.txt")
    lines = vocab.read_text(encoding="utf-8").splitlines()
    # BERT vocabularies reserve [unused0], [unused1] right after [PAD]: ColBERT's markers; and, as
    # a real BERT vocabulary does, they hold every ASCII punctuation character (the skiplist).
    punct = [c for c in string.punctuation if c not in lines]
    vocab.write_text(
        "\n".join([lines[0], "[unused0]", "[unused1]", *lines[1:], *punct]) + "\n", encoding="utf-8"
    )
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True, model_max_length=max_len)
    if extra_tokens:
        tok.add_tokens(extra_tokens)
    torch.manual_seed(seed)
    model = BertModel(_config(len(tok)))
    return tok, model


def build_colbert(
    directory: Path,
    *,
    dim: int = 16,
    seed: int = 0,
    max_len: int = 128,
    metadata: dict[str, object] | None = None,
) -> Path:
    """colbert-ai layout (colbert-ir/colbertv2.0): encoder weights under `bert.` plus `linear.weight`
    in one file, `"HF_ColBERT"` architectures, settings in artifact.metadata (``metadata`` entries
    replace colbertv2.0's; a None value removes the key)."""
    import json

    import torch
    from safetensors.torch import save_file

    tok, bert = _bert_with_markers(directory, seed, max_len)
    bert.config.architectures = ["HF_ColBERT"]
    bert.config.save_pretrained(directory)
    tok.save_pretrained(directory)
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = torch.randn(dim, bert.config.hidden_size) / bert.config.hidden_size**0.5
    save_file(state, str(directory / "model.safetensors"))
    meta: dict[str, object] = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 32,
        "doc_maxlen": 180,
        "dim": dim,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
        "similarity": "cosine",
    }
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (directory / "artifact.metadata").write_text(json.dumps(meta), encoding="utf-8")
    return directory


#: the Dense module of a PyLate checkpoint as PyLate writes it (no bias, Identity)
PYLATE_DENSE: dict[str, object] = {"bias": False, "activation_function": "torch.nn.modules.linear.Identity"}


def write_dense_modules(
    directory: Path,
    in_features: int,
    dense: list[dict[str, object]],
    *,
    seed: int = 0,
    first_index: int = 1,
    module_type: str = "pylate.models.Dense.Dense",
) -> list[dict[str, object]]:
    """Write ``{i}_Dense/`` folders (config.json + model.safetensors) for a chain of Dense modules;
    each spec holds ``out_features`` and the config.json fields to write (``bias``,
    ``activation_function``, ...; a None value leaves the key out). Returns the modules.json entries."""
    import json

    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed + 1)
    entries: list[dict[str, object]] = []
    width = in_features
    for i, spec in enumerate(dense, start=first_index):
        out = int(spec["out_features"])  # type: ignore[call-overload]
        cfg = {"in_features": width, "out_features": out, **{k: v for k, v in spec.items() if v is not None}}
        folder = directory / f"{i}_Dense"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        tensors = {"linear.weight": torch.randn(out, width, generator=gen) / width**0.5}
        if cfg.get("bias", True):
            tensors["linear.bias"] = torch.randn(out, generator=gen) * 0.5
        save_file(tensors, str(folder / "model.safetensors"))
        entries.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": module_type})
        width = out
    return entries


def build_pylate(
    directory: Path,
    *,
    dim: int = 12,
    seed: int = 0,
    max_len: int = 128,
    dense: list[dict[str, object]] | None = None,
    config: dict[str, object] | None = None,
) -> Path:
    """PyLate layout: encoder at the root, Dense projection modules in ``{i}_Dense`` (one ``dim``-wide
    module by default, or the chain ``dense`` as :func:`write_dense_modules` takes it), prefixes and
    lengths in config_sentence_transformers.json (``config`` entries replace the defaults; a None
    value removes the key)."""
    import json

    tok, bert = _bert_with_markers(directory, seed, max_len, extra_tokens=["[Q] ", "[D] "])
    bert.save_pretrained(directory)
    tok.save_pretrained(directory)
    entries = write_dense_modules(
        directory, bert.config.hidden_size, dense or [{"out_features": dim, **PYLATE_DENSE}], seed=seed
    )
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    (directory / "modules.json").write_text(json.dumps(modules + entries), encoding="utf-8")
    cfg: dict[str, object] = {
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 32,
        "document_length": 180,
        "do_query_expansion": True,
        "attend_to_expansion_tokens": False,
        "similarity_fn_name": "MaxSim",
    }
    for key, value in (config or {}).items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (directory / "config_sentence_transformers.json").write_text(json.dumps(cfg), encoding="utf-8")
    return directory


def t5_config(vocab_size: int, **extra: object):
    """A 2-layer T5 (d_model 32) with T5's special ids: pad 0 (also the decoder start), eos 1."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=TINY["hidden_size"],
        d_kv=8,
        d_ff=TINY["intermediate_size"],
        num_layers=TINY["num_hidden_layers"],
        num_decoder_layers=TINY["num_hidden_layers"],
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        initializer_factor=1.0,
        **extra,
    )


def build_t5(
    directory: Path, *, seed: int = 0, words: tuple[str, ...] = ("true", "false", "yes", "no")
) -> Path:
    """A 2-layer, d_model-32 T5ForConditionalGeneration with a sentencepiece-style (Metaspace, unigram)
    tokenizer that appends ``</s>``, as T5's does: the shape of a MonoT5 / RankT5 checkpoint."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>"]
    prompt = ["Query", "Document", "Relevant", ":"]
    pieces = (
        [(s, 0.0) for s in specials]
        + [("▁" + w, -2.0) for w in dict.fromkeys([*WORDS, *words, *prompt])]
        + [("▁", -3.0)]
        + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:"]
        + [("<extra_id_10>", 0.0)]
        # bare (word-inside) pieces, as real sentencepiece vocabularies have: not the answer tokens
        + [("true", -4.0), ("false", -4.0)]
    )
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    # as sentencepiece's T5 normalisation: runs of spaces collapse, ends are stripped
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<extra_id_10>"],
        model_max_length=128,
    )
    torch.manual_seed(seed)
    config = t5_config(len(pieces))
    T5ForConditionalGeneration(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory
