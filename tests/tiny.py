"""Tiny BERT checkpoints built at test time: the same loading path as a user's model id, no Hub."""

from __future__ import annotations

from pathlib import Path

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
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,
        **kw,
    )


def _tokenizer(directory: Path, max_len: int):
    from transformers import BertTokenizerFast

    vocab = write_vocab(directory / "vocab.txt")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=max_len)


def build_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0, max_len: int = 128) -> Path:
    """A 2-layer, hidden-32 BertForSequenceClassification saved as a cross-encoder checkpoint."""
    import torch
    from transformers import BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(directory, max_len)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(_config(tok.vocab_size, num_labels=num_labels))
    model.save_pretrained(directory)
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
    BertModel(_config(tok.vocab_size)).save_pretrained(raw)
    tok.save_pretrained(raw)
    transformer = modules.Transformer(str(raw), max_seq_length=max_len)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(directory / "st"))
    return directory / "st"
