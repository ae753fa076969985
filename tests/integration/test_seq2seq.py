"""MonoT5 / RankT5 over a tiny T5 built at test time (same loading path as a Hub id)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from tiny import build_t5

from rerankers_plugins import (
    BackendError,
    Candidate,
    Cascade,
    ConfigError,
    FakeScorer,
    Hybrid,
    ScoreScale,
    Selective,
    Signal,
    Stage,
    Threshold,
    arerank,
    rerank,
)
from rerankers_plugins.scorers.seq2seq import Seq2SeqScorer

QUERY = "what is the cat"
DOCS = [
    "the cats sat on the mat",
    "money loan rate",
    "the red apple is a fruit",
    "",
    "paris is the capital city of france and people live in paris",
]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def _mono_loaded(t5_dir):
    return Seq2SeqScorer(str(t5_dir), dtype="float32", batch_size=2)


@pytest.fixture
def mono(_mono_loaded):
    return copy.deepcopy(_mono_loaded)  # loaded once, a copy per test (see conftest.py)


def by_hand(t5_dir, query, doc, template, ids):
    """The model's first decoder step on the whole prompt, tokenized as one string."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(t5_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(t5_dir)).eval()
    enc = tok(template.format(query=query, document=doc), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, 0]
    return logits[ids]


def test_monot5_is_the_softmax_of_true_and_false_computed_by_hand(t5_dir, mono):
    tok_true, tok_false = mono.true_id, mono.false_id
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(t5_dir))
    assert tok.convert_ids_to_tokens([tok_true, tok_false]) == ["▁true", "▁false"]
    scores = mono.score(QUERY, DOCS)
    assert mono.scale is ScoreScale.PROBABILITY
    for doc, got in zip(DOCS, scores, strict=True):
        logits = by_hand(
            t5_dir, QUERY, doc, "Query: {query} Document: {document} Relevant:", [tok_true, tok_false]
        )
        assert got == pytest.approx(float(torch.softmax(logits, -1)[0]), abs=1e-5)
        assert 0.0 <= got <= 1.0
    # batching and order do not change a score
    assert Seq2SeqScorer(str(t5_dir), dtype="float32", batch_size=16).score(
        QUERY, DOCS[::-1]
    ) == pytest.approx(scores[::-1], abs=1e-5)


def test_rankt5_is_the_score_tokens_logit(t5_dir):
    rank = Seq2SeqScorer(str(t5_dir), variant="rankt5", dtype="float32")
    assert rank.scale is ScoreScale.LOGIT
    for doc, got in zip(DOCS, rank.score(QUERY, DOCS), strict=True):
        logit = by_hand(t5_dir, QUERY, doc, "Query: {query} Document: {document}", [rank.score_id])
        assert got == pytest.approx(float(logit[0]), abs=1e-5)


def test_other_answer_words_and_token_ids(t5_dir, mono):
    yes_no = Seq2SeqScorer(str(t5_dir), true_token="yes", false_token="no", dtype="float32")
    assert (yes_no.true_id, yes_no.false_id) != (mono.true_id, mono.false_id)
    by_id = Seq2SeqScorer(
        str(t5_dir), true_token=yes_no.true_id, false_token=yes_no.false_id, dtype="float32"
    )
    assert by_id.score(QUERY, DOCS) == pytest.approx(yes_no.score(QUERY, DOCS), abs=1e-6)
    with pytest.raises(ConfigError, match="not one token"):
        Seq2SeqScorer(str(t5_dir), true_token="zebra")
    with pytest.raises(ConfigError, match="same token"):
        Seq2SeqScorer(str(t5_dir), true_token="true", false_token="true")


def test_long_documents_are_cut_but_the_prompt_is_kept(t5_dir, caplog):
    scorer = Seq2SeqScorer(str(t5_dir), dtype="float32", max_length=24)
    long_doc = " ".join(["the cat sat on the mat"] * 20)
    rows, cut = scorer._encode(QUERY, [long_doc, "the cat"])
    assert cut == 1 and len(rows[0]) == 24 and len(rows[1]) < 24
    tail = scorer.tokenizer.convert_ids_to_tokens(rows[0][-3:])
    assert tail == ["▁Relevant", ":", "</s>"], "the answer prompt survives truncation"
    long_query = " ".join(["what is the capital city of france"] * 6)
    rows, _ = scorer._encode(long_query, [long_doc, ""])
    assert all(len(r) <= 24 for r in rows), "a long query never pushes a prompt past max_length"
    assert scorer.tokenizer.convert_ids_to_tokens(rows[0][-3:]) == ["▁Relevant", ":", "</s>"]
    with caplog.at_level(logging.WARNING):
        scorer.score(QUERY, [long_doc])
        scorer.score(QUERY, [long_doc])
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1


def test_through_every_strategy_and_async(mono):
    cands = [Candidate(t, id=str(i), retrieval_score=float(i)) for i, t in enumerate(DOCS)]
    plain = rerank(QUERY, cands, mono)
    assert sorted(s.candidate.id for s in plain) == [c.id for c in cands]
    for strategy in (
        Threshold(mono, absolute=0.0),
        Selective(mono, k=3),
        Cascade([Stage(FakeScorer(), keep=4), Stage(mono, keep=2)]),
        Hybrid([Signal(mono, 0.7), Signal("retrieval", 0.3)]),
    ):
        out = rerank(QUERY, cands, strategy)
        assert len({s.candidate.id for s in out}) == len(out) <= len(cands)
    assert [s.candidate.id for s in rerank(QUERY, cands, Threshold(mono, absolute=0.0))] == [
        s.candidate.id for s in plain
    ]


async def test_async_matches_sync(mono):
    sync = [s.score for s in rerank(QUERY, DOCS, mono)]
    assert [s.score for s in await arerank(QUERY, DOCS, mono)] == pytest.approx(sync)


def test_adapters(t5_dir, mono):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import Seq2SeqRerank as LC
    from rerankers_plugins.integrations.llama_index import Seq2SeqRerank as LI

    expected = [s.text for s in rerank(QUERY, DOCS, mono, top_n=2)]
    lc = LC(model=str(t5_dir), top_n=2, dtype="float32")
    got = lc.compress_documents([Document(page_content=t) for t in DOCS], QUERY)
    assert [d.page_content for d in got] == expected
    assert 0 <= got[0].metadata["relevance_score"] <= 1
    li = LI(model=str(t5_dir), variant="rankt5", top_n=2, dtype="float32")
    nodes = li.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in DOCS], QueryBundle(QUERY))
    rank = Seq2SeqScorer(str(t5_dir), variant="rankt5", dtype="float32")
    assert [n.node.get_content() for n in nodes] == [s.text for s in rerank(QUERY, DOCS, rank, top_n=2)]
    assert li.class_name() == "Seq2SeqRerank"


def test_bad_models_and_options(t5_dir, tiny_ce_dir, tmp_path):
    with pytest.raises(ConfigError, match="not an encoder-decoder"):
        Seq2SeqScorer(str(tiny_ce_dir))
    with pytest.raises(ConfigError, match="float16"):
        Seq2SeqScorer(str(t5_dir), dtype="float16")
    with pytest.raises(ConfigError, match="variant"):
        Seq2SeqScorer(str(t5_dir), variant="monobert")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="template"):
        Seq2SeqScorer(str(t5_dir), template="Query: {query}")
    with pytest.raises(BackendError, match="does not exist"):
        Seq2SeqScorer(str(tmp_path / "missing"))
    with pytest.raises(BackendError, match=r"local path|model-dir"):
        Seq2SeqScorer("castorini/monot5-base-msmarco")  # offline in tests: says how to pass a directory
