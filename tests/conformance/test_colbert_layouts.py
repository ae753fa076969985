"""ColBERTScorer against the reference implementations, one tiny checkpoint per Hub layout.

Each checkpoint is built at test time in the file layout of a real one (random weights, 2 layers,
hidden 32). The references are never our own code:

- sentence-transformers' ``MultiVectorEncoder`` (it loads the colbert-ai and the PyLate layouts):
  ``encode_query`` / ``encode_document``, then MaxSim;
- the published rules written out below: colbert-ai's
  ``colbert/modeling/tokenization/query_tokenization.py``, ``doc_tokenization.py`` and
  ``colbert/modeling/colbert.py`` (stanford-futuredata/ColBERT); PyLate's
  ``pylate/models/colbert.py`` (lightonai/pylate), the reference for the answerai mixed layout,
  which ``MultiVectorEncoder`` loads without its scoring mask and normalisation (it takes the
  ``"HF_ColBERT"`` architecture for a native save and skips the PyLate fix-ups).

Scores are compared raw (``normalize=False``: the sum over query tokens colbert-ai and PyLate
return) in float32, within 1e-4.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch
from tiny import TINY, WORDS, build_colbert, build_pylate, write_dense_modules

from rerankers_plugins import BackendError, ColBERTScorer

# the reference (sentence-transformers' MultiVectorEncoder) exists from sentence-transformers 6: on
# the oldest release the extras accept (CI's floor job) there is nothing to compare with
pytest.importorskip(
    "sentence_transformers.multi_vector_encoder", reason="the reference needs sentence-transformers >= 6"
)

TOL = 1e-4
QUERIES = ["where do cats sit", "what is the capital of france, and who lives in paris?"]
DOCS = [
    "The cat sat on the mat, by the river bank.",
    "Paris is the capital city of France! People live in Paris; the museum is there.",
    "dogs",
    "Protein, genes and cells: a study of cancer risk (vitamin effect) in patients.",
]


# -- references ---------------------------------------------------------------------------------


def maxsim_sum(q, d) -> float:
    return float((q.float() @ d.float().T).max(dim=1).values.sum())


def mve_scores(directory: Path, *, query_length: int | None = None, doc_length: int | None = None):
    """sentence-transformers' MultiVectorEncoder scores, [query][doc]; lengths set on its
    Transformer module the way PyLate's constructor arguments override a checkpoint's."""
    from sentence_transformers.multi_vector_encoder import MultiVectorEncoder

    model = MultiVectorEncoder(str(directory), device="cpu")
    if query_length is not None:
        model[0].query_expansion = {**model[0].query_expansion, "length": query_length}
    if doc_length is not None:
        model[0].document_length = doc_length
    qs = model.encode_query(QUERIES)
    ds = model.encode_document(DOCS)
    return [[maxsim_sum(q, d) for d in ds] for q in qs], model


def colbert_ai_scores(directory: Path):
    """colbert-ai's published rules, read from ``artifact.metadata``:

    - query_tokenization.py ``tensorize``: tokenize ``". " + q`` padded to ``query_maxlen``
      (truncated to it), overwrite position 1 with the Q marker, pad ids -> ``[MASK]``; the mask
      tokens are attended only with ``attend_to_mask_tokens``.
    - doc_tokenization.py ``tensorize``: tokenize ``". " + d`` truncated to ``doc_maxlen``,
      overwrite position 1 with the D marker.
    - colbert.py ``query`` / ``doc``: ``linear(bert(ids, mask)[0])``, documents masked by the
      punctuation skiplist (``tok.encode(symbol)[0]``) and padding, L2-normalised; MaxSim sums
      over query tokens the max over document tokens.
    """
    from safetensors.torch import load_file
    from transformers import BertModel, BertTokenizerFast

    meta = json.loads((directory / "artifact.metadata").read_text())
    tok = BertTokenizerFast.from_pretrained(str(directory))
    bert = BertModel.from_pretrained(str(directory)).eval()
    weight = load_file(str(directory / "model.safetensors"))["linear.weight"]
    q_marker = tok.convert_tokens_to_ids(meta["query_token_id"])
    d_marker = tok.convert_tokens_to_ids(meta["doc_token_id"])
    skip = {tok.encode(s, add_special_tokens=False)[0] for s in string.punctuation}
    if not meta.get("mask_punctuation", True):
        skip = set()
    with torch.no_grad():
        obj = tok(
            [". " + q for q in QUERIES],
            padding="max_length",
            truncation=True,
            max_length=meta["query_maxlen"],
            return_tensors="pt",
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = q_marker
        ids[ids == tok.pad_token_id] = tok.mask_token_id
        if meta.get("attend_to_mask_tokens"):
            mask[ids == tok.mask_token_id] = 1
        q_vecs = torch.nn.functional.normalize(bert(ids, attention_mask=mask)[0] @ weight.T, dim=-1)
        obj = tok(
            [". " + d for d in DOCS],
            padding="longest",
            truncation="longest_first",
            max_length=meta["doc_maxlen"],
            return_tensors="pt",
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = d_marker
        d_vecs = torch.nn.functional.normalize(bert(ids, attention_mask=mask)[0] @ weight.T, dim=-1)
        keep = [[t not in skip and t != tok.pad_token_id for t in row] for row in ids.tolist()]
        docs = [d_vecs[i][torch.tensor(k)] for i, k in enumerate(keep)]
    return [[maxsim_sum(q, d) for d in docs] for q in q_vecs]


def pylate_scores(directory: Path):
    """PyLate's published rules (lightonai/pylate, ``pylate/models/colbert.py``): settings from
    config_sentence_transformers.json with its defaults (``[Q] `` / ``[D] ``, 32 / 180, expansion
    on, punctuation skiplist); ``preprocess`` tokenizes to ``length - 1`` tokens (queries padded
    to it with ``[MASK]``, the tokenizer's pad token in PyLate), inserts the prefix id after the
    first token, attends everything with ``attend_to_expansion_tokens``; ``encode`` runs the
    encoder and the modules.json Dense modules (sentence-transformers' own ``Dense``), keeps every
    query token under expansion (else the attended ones) and the attended non-skiplist document
    tokens, L2-normalised."""
    from sentence_transformers.base.modules.dense import Dense
    from transformers import AutoModel, AutoTokenizer

    cfg = json.loads((directory / "config_sentence_transformers.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(directory))
    encoder = AutoModel.from_pretrained(str(directory)).eval()
    entries = json.loads((directory / "modules.json").read_text())
    dense = [
        Dense.load(
            str(directory), subfolder=e["path"], init_defaults={"module_input_name": "token_embeddings"}
        )
        for e in entries
        if e["type"].endswith("Dense")
    ]
    prefix = {True: cfg.get("query_prefix", "[Q] "), False: cfg.get("document_prefix", "[D] ")}
    length = {True: cfg.get("query_length") or 32, False: cfg.get("document_length") or 180}
    expand = cfg.get("do_query_expansion", True)
    attend = expand and cfg.get("attend_to_expansion_tokens", False)
    skiplist = [tok.convert_tokens_to_ids(w) for w in cfg.get("skiplist_words", list(string.punctuation))]
    tok.pad_token = tok.mask_token

    def encode(texts: list[str], is_query: bool):
        feats = tok(
            texts,
            truncation=True,
            max_length=length[is_query] - 1,
            padding="max_length" if is_query and expand else True,
            return_tensors="pt",
        )
        pid = tok.convert_tokens_to_ids(prefix[is_query])
        ids, mask = feats["input_ids"], feats["attention_mask"]
        ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], pid), ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
        if is_query and attend:
            mask.fill_(1)
        with torch.no_grad():
            out = {"token_embeddings": encoder(input_ids=ids, attention_mask=mask).last_hidden_state}
            for module in dense:
                out = module(out)
        if is_query:
            keep = torch.ones_like(ids, dtype=torch.bool) if expand else mask.bool()
        else:
            keep = ~torch.isin(ids, torch.tensor(skiplist)) & mask.bool()
        emb = out["token_embeddings"]
        return [torch.nn.functional.normalize(emb[i][keep[i]], dim=-1) for i in range(len(texts))]

    qs, ds = encode(QUERIES, True), encode(DOCS, False)
    return [[maxsim_sum(q, d) for d in ds] for q in qs]


def ours(directory: Path, **kw):
    scorer = ColBERTScorer(str(directory), dtype="float32", normalize=False, **kw)
    return [scorer.score(q, DOCS) for q in QUERIES], scorer


def max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colbertv2_dir(tmp_path_factory):
    """colbert-ir/colbertv2.0's layout, with lengths short enough that truncation matters."""
    return build_colbert(
        tmp_path_factory.mktemp("colbertv2"), metadata={"doc_maxlen": 12, "query_maxlen": 10}
    )


def build_modernbert_pylate(directory: Path) -> Path:
    """lightonai/GTE-ModernColBERT-v1's layout: a ModernBERT encoder with a byte-level BPE
    tokenizer ([CLS] ... [SEP] template, [Q] / [D] added tokens), one Dense, the PyLate config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) + rng.choice(".,!?;") for _ in range(300)]
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    cls_id, sep_id = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    tok.add_tokens(["[Q] ", "[D] "])
    config = ModernBertConfig(
        vocab_size=len(tok),
        **TINY,
        max_position_embeddings=128,
        local_attention=16,
        global_attn_every_n_layers=2,
        pad_token_id=tok.pad_token_id,
        cls_token_id=cls_id,
        sep_token_id=sep_id,
        bos_token_id=cls_id,
        eos_token_id=sep_id,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    dense = write_dense_modules(
        directory,
        32,
        [{"out_features": 12, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}],
    )
    transformer = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    (directory / "modules.json").write_text(json.dumps([transformer, *dense]))
    cfg = {
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 10,
        "document_length": 14,
        "do_query_expansion": True,
        "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation),
        "similarity_fn_name": "MaxSim",
    }
    (directory / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    return directory


def add_st_files(directory: Path, *, config: dict[str, object]) -> Path:
    """answerai-colbert-small-v1's mixed layout: a colbert-ai checkpoint plus the
    sentence-transformers files (modules.json, 1_Dense/, config_sentence_transformers.json). The
    Dense weights differ from the root `linear.weight` here, so the test tells which one is used."""
    dense = write_dense_modules(
        directory,
        32,
        [{"out_features": 16, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}],
        seed=7,
    )
    transformer = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    (directory / "modules.json").write_text(json.dumps([transformer, *dense]))
    (directory / "config_sentence_transformers.json").write_text(json.dumps(config))
    return directory


# -- conformance ----------------------------------------------------------------------------------


def test_colbertv2_reads_artifact_metadata_lengths(colbertv2_dir):
    got, scorer = ours(colbertv2_dir)
    assert (scorer.layout, scorer.query_length, scorer.max_length) == ("colbert", 10, 12)
    rules = colbert_ai_scores(colbertv2_dir)
    st, _ = mve_scores(colbertv2_dir)
    assert max_diff(got, rules) < TOL
    assert max_diff(got, st) < TOL
    # truncation matters at these lengths: the declared 12 tokens are not what 180 would read
    assert max_diff(got, ours(colbertv2_dir, max_length=64)[0]) > 1e-3


def test_colbertv2_attending_to_mask_tokens(tmp_path):
    path = build_colbert(
        tmp_path / "c",
        seed=3,
        metadata={"doc_maxlen": 16, "query_maxlen": 12, "attend_to_mask_tokens": True},
    )
    got, _ = ours(path)
    assert max_diff(got, colbert_ai_scores(path)) < TOL
    assert max_diff(got, mve_scores(path)[0]) < TOL


def test_colbertv2_without_punctuation_mask(tmp_path):
    path = build_colbert(
        tmp_path / "c", seed=4, metadata={"doc_maxlen": 20, "query_maxlen": 8, "mask_punctuation": False}
    )
    got, _ = ours(path)
    assert max_diff(got, colbert_ai_scores(path)) < TOL
    assert max_diff(got, mve_scores(path)[0]) < TOL


def test_pylate_one_dense_with_declared_lengths(tmp_path):
    path = build_pylate(tmp_path / "p", config={"query_length": 10, "document_length": 12})
    got, scorer = ours(path)
    assert (scorer.layout, scorer.query_length, scorer.max_length) == ("pylate", 10, 12)
    assert max_diff(got, mve_scores(path)[0]) < TOL
    assert max_diff(got, pylate_scores(path)) < TOL


@pytest.mark.parametrize(
    "chain",
    [
        [  # two modules, biases and activations (LateOn-Code-edge style)
            {"out_features": 48, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"},
            {"out_features": 16, "bias": True, "activation_function": "torch.nn.modules.linear.Identity"},
        ],
        [  # three modules, mixed (colgemma style)
            {"out_features": 64, "bias": False, "activation_function": "torch.nn.modules.activation.GELU"},
            {"out_features": 24, "bias": True, "activation_function": "torch.nn.modules.activation.SiLU"},
            {"out_features": 8, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"},
        ],
    ],
    ids=["two-dense", "three-dense"],
)
def test_pylate_chained_dense_modules(tmp_path, chain):
    path = build_pylate(tmp_path / "p", dense=chain, config={"query_length": 12, "document_length": 14})
    got, scorer = ours(path)
    assert scorer.dim == chain[-1]["out_features"]
    assert max_diff(got, mve_scores(path)[0]) < TOL
    assert max_diff(got, pylate_scores(path)) < TOL


def test_pylate_without_expansion_attending_and_custom_skiplist(tmp_path):
    path = build_pylate(
        tmp_path / "p",
        seed=5,
        config={
            "query_length": 9,
            "document_length": 16,
            "do_query_expansion": False,
            "skiplist_words": [",", "the"],
        },
    )
    got, _ = ours(path)
    assert max_diff(got, mve_scores(path)[0]) < TOL
    attending = build_pylate(
        tmp_path / "a", seed=6, config={"query_length": 12, "attend_to_expansion_tokens": True}
    )
    got, _ = ours(attending)
    assert max_diff(got, mve_scores(attending)[0]) < TOL


def test_modernbert_bpe_checkpoint(tmp_path):
    path = build_modernbert_pylate(tmp_path / "m")
    got, scorer = ours(path)
    assert (scorer.query_length, scorer.max_length) == (10, 14)
    assert max_diff(got, mve_scores(path)[0]) < TOL


def test_answerai_mixed_layout_is_read_through_its_sentence_transformers_files(tmp_path):
    path = build_colbert(tmp_path / "mixed", seed=2, metadata={"doc_maxlen": 20, "query_maxlen": 16})
    add_st_files(
        path,
        config={
            "query_prefix": "[unused0]",
            "document_prefix": "[unused1]",
            "query_length": 10,
            "document_length": 12,
            "do_query_expansion": True,
            "attend_to_expansion_tokens": False,
            "skiplist_words": list(string.punctuation),
        },
    )
    got, scorer = ours(path)
    assert (scorer.layout, scorer.query_length, scorer.max_length, scorer.dim) == ("pylate", 10, 12, 16)
    assert max_diff(got, pylate_scores(path)) < TOL
    # the colbert-ai reading (artifact.metadata, root linear.weight) is another model
    assert max_diff(got, colbert_ai_scores(path)) > 1e-2


def test_constructor_lengths_override_the_checkpoint(colbertv2_dir, tmp_path):
    got, scorer = ours(colbertv2_dir, query_length=16, max_length=8)
    assert (scorer.query_length, scorer.max_length) == (16, 8)
    assert max_diff(got, mve_scores(colbertv2_dir, query_length=16, doc_length=8)[0]) < TOL
    assert max_diff(got, ours(colbertv2_dir)[0]) > 1e-3
    pylate = build_pylate(tmp_path / "p", config={"query_length": 10, "document_length": 12})
    got, _ = ours(pylate, query_length=14, max_length=9)
    assert max_diff(got, mve_scores(pylate, query_length=14, doc_length=9)[0]) < TOL


def test_pylate_defaults_where_nothing_is_declared(tmp_path):
    path = build_pylate(tmp_path / "p", config={"query_length": None, "document_length": None})
    got, scorer = ours(path)
    # PyLate's defaults, 32 and 180; the tiny encoder's 128 positions cap the document length
    assert (scorer.query_length, scorer.max_length) == (32, 128)
    assert scorer.encode_query(QUERIES[0]).shape[0] == 32
    assert max_diff(got, mve_scores(path, query_length=32, doc_length=128)[0]) < TOL
    colbert = build_colbert(tmp_path / "c", metadata={"doc_maxlen": None, "query_maxlen": None})
    scorer = ColBERTScorer(str(colbert), dtype="float32")
    assert (scorer.query_length, scorer.max_length) == (32, 128)


def test_float32_cache_is_exact_and_float16_is_bounded(colbertv2_dir, tmp_path):
    reference = colbert_ai_scores(colbertv2_dir)
    exact = ColBERTScorer(str(colbertv2_dir), dtype="float32", normalize=False, cache_dtype="float32")
    assert exact.cache_dtype == "float32"
    exact.index(DOCS)
    misses = exact.cache.misses
    cached = [exact.score(q, DOCS) for q in QUERIES]  # every document from the cache
    assert exact.cache.misses == misses
    assert max_diff(cached, reference) < TOL
    # the default ("auto") follows the encoder: float32 here
    assert ColBERTScorer(str(colbertv2_dir), dtype="float32").cache_dtype == "float32"
    # disk round trip keeps float32
    disk = ColBERTScorer(
        str(colbertv2_dir), dtype="float32", normalize=False, cache_dtype="float32", cache_dir=tmp_path
    )
    disk.index(DOCS)
    again = ColBERTScorer(
        str(colbertv2_dir), dtype="float32", normalize=False, cache_dtype="float32", cache_dir=tmp_path
    )
    assert max_diff([again.score(q, DOCS) for q in QUERIES], reference) < TOL
    assert again.cache.misses == 0
    half = ColBERTScorer(str(colbertv2_dir), dtype="float32", normalize=False, cache_dtype="float16")
    halved = [half.score(q, DOCS) for q in QUERIES]
    diff = max_diff(halved, reference)
    # float16 rounds each unit-vector component by <= 2**-11 relative: each cosine moves by well
    # under 1e-3, so a sum over 10 query tokens by under 1e-2, and it does move
    assert 1e-6 < diff < 10 * 1e-3


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    l2 = build_colbert(tmp_path / "l2", metadata={"similarity": "l2"})
    with pytest.raises(BackendError, match=r"similarity 'l2' is not supported"):
        ColBERTScorer(str(l2))
    custom = build_pylate(
        tmp_path / "act", dense=[{"out_features": 8, "bias": False, "activation_function": "my.module.Act"}]
    )
    with pytest.raises(BackendError, match=r"activation_function 'my\.module\.Act' is not a torch class"):
        ColBERTScorer(str(custom))
    extra = build_pylate(tmp_path / "extra")
    entries = json.loads((extra / "modules.json").read_text())
    entries.append({"idx": 2, "name": "2", "path": "2_Pool", "type": "my_pkg.TokenPooling"})
    (extra / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(BackendError, match=r"lists my_pkg\.TokenPooling, which ColBERTScorer does not apply"):
        ColBERTScorer(str(extra))
    marker = build_pylate(tmp_path / "marker", config={"query_prefix": "[QUERY] "})
    with pytest.raises(BackendError, match=r"marker '\[QUERY\] ' is not a token"):
        ColBERTScorer(str(marker))
    bias = build_pylate(tmp_path / "bias")
    (bias / "1_Dense" / "config.json").write_text(
        json.dumps({"in_features": 32, "out_features": 12, "bias": True})
    )
    with pytest.raises(BackendError, match=r"declares a bias but the weights file has no `linear\.bias`"):
        ColBERTScorer(str(bias))
