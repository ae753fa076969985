"""Seq2seq and bi-encoder checkpoints in their published Hub layouts, each scored by us and by its
reference on the same directory (float32, within 1e-4), or refused naming what can score it.

The models are tiny and random; what is copied from the real checkpoints is the file layout, the
config fields, the tokenizer type and the prompts:

- castorini/monot5-base-msmarco (Hub siblings: config.json, pytorch_model.bin,
  special_tokens_map.json, spiece.model, tokenizer_config.json: no tokenizer.json, no safetensors;
  T5ForConditionalGeneration, t5-base v1.0 config: relu feed-forward, tied embeddings). The
  reference is castorini's pygaggle, pygaggle/rerank/transformer.py ``MonoT5.rescore`` with
  pygaggle/model/tokenize.py ``T5BatchTokenizer``: the text ``Query: {q} Document: {d} Relevant:``
  with `` </s>`` appended, right-padded, the first decoder step's logits at ``▁false`` / ``▁true``
  (``prediction_tokens``), log-softmax, the "true" entry.
- RankT5 (Soyoung97/RankT5-base; Zhuang et al. 2022, arXiv:2210.10634): ``Query: {q} Document: {d}``
  and the raw logit of ``<extra_id_10>`` at the first decoder step is the score. Written here in a
  flan-t5 / t5-v1_1 config (gated-gelu; ``tie_word_embeddings`` false, which transformers 5 reads
  as output scaling) with safetensors and tokenizer.json.
- BAAI/bge-small-en-v1.5: Transformer at the root, CLS pooling, Normalize; its
  config_sentence_transformers.json saves no prompts, its card prepends
  ``Represent this sentence for searching relevant passages: `` to queries, nothing to passages.
- intfloat/e5-small-v2 / multilingual-e5-small: mean pooling, Normalize, no saved prompts; the card
  uses ``query: `` / ``passage: ``. Fine-tuned e5s (and sentence-transformers' own docs) save
  ``{"query": "query: ", "passage": "passage: "}``.
- nomic-ai/nomic-embed-text-v1.5: prompts saved as ``query`` / ``passage`` (``search_query: `` /
  ``search_document: ``) beside MTEB task names; mean pooling. Its NomicBert code is remote code, so
  a BERT stands in for the encoder: the prompts are what is under test.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from tiny import WORDS, _config, _tokenizer, t5_config

from rerankers_plugins import BiEncoderScorer, ConfigError
from rerankers_plugins.scorers.seq2seq import Seq2SeqScorer

TOL = 1e-4
QUERY = "what is the capital city of france"
DOCS = [
    "paris is the capital city of france",
    "the cats sat on the mat",
    "money loan rate at the bank",
    "berlin is the capital of germany and people live in berlin " * 3,
    "",
]

# -- T5 checkpoints ---------------------------------------------------------------------------


def _spiece(directory: Path) -> None:
    """A unigram sentencepiece model trained on a few hundred lines, with T5's special ids
    (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    rng = random.Random(0)
    words = [*WORDS, "true", "false", "Query:", "Document:", "Relevant:", "capital", "city"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    lines += [f"Query: {QUERY} Document: {d} Relevant: true" for d in DOCS] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=150,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())


def _t5_config(vocab_size: int, *, v1_1: bool):
    extra = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False} if v1_1 else {}
    return t5_config(vocab_size, **extra)


def build_hub_t5(directory: Path, *, seed: int = 0, v1_1: bool = False, safetensors: bool = False) -> Path:
    """A T5ForConditionalGeneration in castorini/monot5-base-msmarco's file layout (``safetensors``
    and ``v1_1`` give the newer flan-t5 style)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    _spiece(directory)
    extra_ids = [f"<extra_id_{i}>" for i in range(100)]
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(
        json.dumps({**specials, "additional_special_tokens": extra_ids}), encoding="utf-8"
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **specials,
                "extra_ids": 100,
                "additional_special_tokens": extra_ids,
                "model_max_length": 512,
                "name_or_path": "t5-base",
            }
        ),
        encoding="utf-8",
    )
    # the tokenizer needs config.json to know it is a T5Tokenizer; the vocabulary is the
    # sentencepiece pieces then the 100 sentinels, the model's rows padded past it (32100 -> 32128)
    _t5_config(8, v1_1=v1_1).save_pretrained(directory)
    size = len(AutoTokenizer.from_pretrained(str(directory)))
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(_t5_config(size + 28, v1_1=v1_1))
    model.config.architectures = ["T5ForConditionalGeneration"]
    model.save_pretrained(directory)
    if not safetensors:  # a 2021 torch.save of the whole state dict, tied copies included
        (directory / "model.safetensors").unlink()
        torch.save(
            {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "pytorch_model.bin"
        )
    else:
        AutoTokenizer.from_pretrained(str(directory)).save_pretrained(directory)  # adds tokenizer.json
    return directory


def pygaggle_monot5(directory: Path, query: str, docs: list[str]) -> list[float]:
    """castorini's MonoT5.rescore: log P("▁true") over {"▁false", "▁true"} at the first step."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(directory)).eval()
    false_id, true_id = tok.get_vocab()["▁false"], tok.get_vocab()["▁true"]
    texts = [f"Query: {query} Document: {d} Relevant: {tok.eos_token}" for d in docs]
    # T5BatchTokenizer: padding="longest", truncation, max_length=512; the slow T5Tokenizer it ran
    # adds no second </s> to a text that already ends in one
    enc = tok(texts, add_special_tokens=False, padding="longest", truncation=True, max_length=512)
    ids = torch.tensor(enc["input_ids"])
    mask = torch.tensor(enc["attention_mask"])
    start = torch.full((len(docs), 1), model.config.decoder_start_token_id, dtype=torch.long)
    with torch.no_grad():  # pygaggle's greedy_decode(length=1, return_last_logits=True)
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, -1, :]
    scores = torch.log_softmax(logits[:, [false_id, true_id]], dim=1)[:, 1]
    return scores.tolist()


def rankt5_reference(directory: Path, query: str, docs: list[str]) -> list[float]:
    """RankT5's rule: the logit of <extra_id_10> at the first decoder step."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(directory)).eval()
    enc = tok([f"Query: {query} Document: {d}" for d in docs], padding="longest", return_tensors="pt")
    start = torch.full((len(docs), 1), model.config.decoder_start_token_id, dtype=torch.long)
    with torch.no_grad():
        logits = model(**enc, decoder_input_ids=start).logits[:, 0, :]
    return logits[:, tok.convert_tokens_to_ids("<extra_id_10>")].tolist()


@pytest.fixture(scope="module")
def monot5_dir(tmp_path_factory):
    return build_hub_t5(tmp_path_factory.mktemp("monot5-base-msmarco"))


@pytest.fixture(scope="module")
def rankt5_dir(tmp_path_factory):
    return build_hub_t5(tmp_path_factory.mktemp("rankt5-base"), seed=1, v1_1=True, safetensors=True)


def test_monot5_matches_pygaggle(monot5_dir):
    assert not (monot5_dir / "tokenizer.json").exists() and (monot5_dir / "pytorch_model.bin").exists()
    ours = Seq2SeqScorer(str(monot5_dir), dtype="float32", batch_size=2).score(QUERY, DOCS)
    ref = pygaggle_monot5(monot5_dir, QUERY, DOCS)
    diff = max(abs(o - float(torch.tensor(r).exp())) for o, r in zip(ours, ref, strict=True))
    assert diff < TOL, f"MonoT5 vs pygaggle: max abs difference {diff:.2e}"
    assert max(abs(float(torch.tensor(o).log()) - r) for o, r in zip(ours, ref, strict=True)) < TOL


def test_rankt5_matches_its_rule(rankt5_dir):
    scorer = Seq2SeqScorer(str(rankt5_dir), variant="rankt5", dtype="float32", batch_size=2)
    assert scorer.score_id == len(scorer.tokenizer) - 11  # <extra_id_10>: sentinels count down
    ours, ref = scorer.score(QUERY, DOCS), rankt5_reference(rankt5_dir, QUERY, DOCS)
    diff = max(abs(o - r) for o, r in zip(ours, ref, strict=True))
    assert diff < TOL, f"RankT5 vs its rule: max abs difference {diff:.2e}"


def _strip_decoder(directory: Path, *, safetensors: bool) -> None:
    """Keep only the shared embedding and the encoder, as encoder-only T5 exports do, and write
    the config without ``is_encoder_decoder`` (T5Config then defaults it to true)."""
    from safetensors.torch import save_file
    from transformers import T5EncoderModel

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config.pop("is_encoder_decoder", None)
    config.pop("architectures", None)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    encoder = T5EncoderModel.from_pretrained(str(directory))
    state = {  # the embedding once, under "shared" (encoder.embed_tokens is tied to it)
        k: v.contiguous()
        for k, v in encoder.state_dict().items()
        if k.startswith(("shared", "encoder.")) and k != "encoder.embed_tokens.weight"
    }
    for old in ("model.safetensors", "pytorch_model.bin"):
        (directory / old).unlink(missing_ok=True)
    if safetensors:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_t5_without_decoder_weights_is_refused(monot5_dir, tmp_path, safetensors):
    directory = tmp_path / "t5-encoder-export"
    shutil.copytree(monot5_dir, directory)
    _strip_decoder(directory, safetensors=safetensors)
    with pytest.raises(ConfigError, match=r"decoder weights.*BiEncoderScorer.*ColBERTScorer.*fine-tune"):
        Seq2SeqScorer(str(directory), dtype="float32")


def test_t5_encoder_model_is_refused(monot5_dir, tmp_path):
    from transformers import T5EncoderModel

    directory = tmp_path / "t5-encoder-model"
    shutil.copytree(monot5_dir, directory)
    (directory / "pytorch_model.bin").unlink()
    T5EncoderModel.from_pretrained(str(monot5_dir)).save_pretrained(directory)
    with pytest.raises(ConfigError, match=r"encoder-only t5 checkpoint.*T5EncoderModel.*BiEncoderScorer"):
        Seq2SeqScorer(str(directory))


# -- bi-encoders ------------------------------------------------------------------------------

BGE_QUERY = "Represent this sentence for searching relevant passages: "
PASSAGES = [
    "paris is the capital city of france",
    "the cats sat on the mat",
    "interest rate and loan money at the bank",
    "green apple tree in the day",
]


def build_hub_bi_encoder(
    directory: Path, *, pooling: str, normalize: bool, prompts: dict[str, str] | None, seed: int = 0
) -> Path:
    """A BERT saved as the published sentence-transformers 2.x checkpoints are: the encoder at the
    root, ``1_Pooling``, optionally ``2_Normalize``, and config_sentence_transformers.json holding
    ``prompts`` only where the checkpoint saves them."""
    from transformers import BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(directory, 128)
    torch.manual_seed(seed)
    bert = BertModel(_config(len(tok)))
    bert.save_pretrained(directory)
    tok.save_pretrained(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": True}), encoding="utf-8"
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": bert.config.hidden_size,
                **{
                    f"pooling_mode_{m}": m == {"cls": "cls_token", "mean": "mean_tokens"}[pooling]
                    for m in modes
                },
            }
        ),
        encoding="utf-8",
    )
    st_config: dict[str, object] = {
        "__version__": {"sentence_transformers": "2.2.2", "transformers": "4.28.1", "pytorch": "1.13.0"}
    }
    if prompts is not None:
        st_config.update({"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config), encoding="utf-8")
    return directory


def model_card_cosine(directory: Path, query: str, texts: list[str], q_prompt: str, d_prompt: str):
    """The model cards' usage: encode with the prompt given explicitly, cosine of the two."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu")
    q = model.encode([query], prompt=q_prompt, normalize_embeddings=True, convert_to_tensor=True)[0]
    d = model.encode(texts, prompt=d_prompt, normalize_embeddings=True, convert_to_tensor=True)
    return (d @ q).tolist()


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


E5_SAVED = {"query": "query: ", "passage": "passage: "}
NOMIC_SAVED = {
    "query": "search_query: ",
    "passage": "search_document: ",
    "Classification": "classification: ",
    "MultilabelClassification": "classification: ",
    "Clustering": "clustering: ",
    "PairClassification": "classification: ",
    "STS": "classification: ",
    "Summarization": "classification: ",
    "Speed": "search_document: ",
}


@pytest.mark.parametrize(
    ("family", "pooling", "normalize", "saved", "q_prompt", "d_prompt"),
    [
        ("e5-with-saved-prompts", "mean", True, E5_SAVED, "query: ", "passage: "),
        ("nomic-embed-text-v1.5", "mean", False, NOMIC_SAVED, "search_query: ", "search_document: "),
        ("bge-with-saved-prompts", "cls", True, {"query": BGE_QUERY, "document": ""}, BGE_QUERY, ""),
    ],
)
def test_saved_prompts_are_applied_as_the_model_card_does(
    tmp_path, family, pooling, normalize, saved, q_prompt, d_prompt
):
    directory = build_hub_bi_encoder(tmp_path / family, pooling=pooling, normalize=normalize, prompts=saved)
    scorer = BiEncoderScorer(str(directory), dtype="float32")
    assert (scorer.query_prompt, scorer.document_prompt) == (q_prompt, d_prompt)
    ref = model_card_cosine(directory, QUERY, PASSAGES, q_prompt, d_prompt)
    diff = _max_diff(scorer.score(QUERY, PASSAGES), ref)
    assert diff < TOL, f"{family}: max abs difference {diff:.2e}"
    if d_prompt:  # the prompt moves the scores: a scorer that dropped it would not pass
        assert _max_diff(model_card_cosine(directory, QUERY, PASSAGES, q_prompt, ""), ref) > 1e-3


@pytest.mark.parametrize(
    ("family", "pooling", "q_prompt", "d_prompt"),
    [("bge-small-en-v1.5", "cls", BGE_QUERY, ""), ("e5-small-v2", "mean", "query: ", "passage: ")],
)
def test_published_checkpoints_without_saved_prompts_take_the_cards_prompts(
    tmp_path, family, pooling, q_prompt, d_prompt
):
    directory = build_hub_bi_encoder(tmp_path / family, pooling=pooling, normalize=True, prompts=None)
    plain = BiEncoderScorer(str(directory), dtype="float32")
    assert (plain.query_prompt, plain.document_prompt) == ("", "")  # nothing saved, nothing guessed
    assert (
        _max_diff(plain.score(QUERY, PASSAGES), model_card_cosine(directory, QUERY, PASSAGES, "", "")) < TOL
    )
    scorer = BiEncoderScorer(str(directory), dtype="float32", query_prompt=q_prompt, document_prompt=d_prompt)
    ref = model_card_cosine(directory, QUERY, PASSAGES, q_prompt, d_prompt)
    diff = _max_diff(scorer.score(QUERY, PASSAGES), ref)
    assert diff < TOL, f"{family}: max abs difference {diff:.2e}"
    assert scorer.fingerprint() != plain.fingerprint()
    with pytest.raises(ConfigError, match="query_prompt"):
        BiEncoderScorer(str(directory), query_prompt=1)  # type: ignore[arg-type]


def test_router_bi_encoder_routes_each_side(tmp_path):
    """An asymmetric model (sentence-transformers Router): the query and the documents go
    through different encoders, each with its prompt."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    from rerankers_plugins.scorers.bi_encoder import BiEncoderScorer as Scorer

    routes = []
    for side, seed in (("query", 0), ("document", 1)):
        raw = build_hub_bi_encoder(
            tmp_path / f"raw-{side}", pooling="mean", normalize=False, prompts=None, seed=seed
        )
        transformer = modules.Transformer(str(raw), max_seq_length=128)
        routes.append(
            [transformer, modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")]
        )
    router = modules.Router.for_query_document(query_modules=routes[0], document_modules=routes[1])
    directory = tmp_path / "router"
    SentenceTransformer(modules=[router], prompts={"query": "query: ", "passage": "passage: "}).save(
        str(directory)
    )

    scorer = Scorer(str(directory), dtype="float32")
    assert (scorer.query_prompt, scorer.document_prompt) == ("query: ", "passage: ")
    model = SentenceTransformer(str(directory), device="cpu")
    q = model.encode_query([QUERY], prompt="query: ", normalize_embeddings=True, convert_to_tensor=True)[0]
    d = model.encode_document(PASSAGES, prompt="passage: ", normalize_embeddings=True, convert_to_tensor=True)
    diff = _max_diff(scorer.score(QUERY, PASSAGES), (d @ q).tolist())
    assert diff < TOL, f"Router: max abs difference {diff:.2e}"
