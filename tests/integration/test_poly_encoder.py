"""Poly-encoders: trained from the tiny BERT on the tiny BEIR folder of test_train, cached codes."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_train import FAST, TOPICS, Interrupt, positive_first, write_beir
from tiny import build_encoder

from rerankers_plugins import (
    BackendError,
    Candidate,
    Cascade,
    ConfigError,
    FakeScorer,
    Hybrid,
    PolyEncoderScorer,
    ScoreScale,
    Selective,
    Signal,
    Stage,
    Threshold,
    arerank,
    rerank,
)
from rerankers_plugins.scorers._tokens import pad_right
from rerankers_plugins.scorers.poly_encoder import build_poly_encoder, tokenize
from rerankers_plugins.train import fine_tune

DOCS = [t for texts in TOPICS.values() for t in texts]


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="module")
def trained(beir, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "poly"
    result = fine_tune(
        beir,
        str(encoder),
        out,
        arch="poly-encoder",
        codes=4,
        max_steps=60,  # the loss at a third of its start, every known positive first
        save_steps=1000,
        dev_fraction=0.2,
        **FAST,
    )
    return out, result


def test_training_lowers_the_loss_and_a_known_positive_outranks_its_negatives(beir, trained):
    out, result = trained
    assert result.steps == 60 and result.settings["arch"] == "poly-encoder"
    history = json.loads((out / "training.json").read_text())["loss_history"]
    assert sum(history[-3:]) / 3 < 0.75 * (sum(history[:3]) / 3)
    assert {"poly_encoder.json", "poly_codes.safetensors", "config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert "PolyEncoderScorer" in (out / "README.md").read_text()
    scorer = PolyEncoderScorer(str(out), dtype="float32")
    assert scorer.codes == 4 and scorer.scale is ScoreScale.LOGIT
    wins = positive_first(beir, scorer, result.dev_query_ids)
    assert sum(wins) >= 0.9 * len(wins), (wins, history)


def test_cached_and_uncached_scores_agree(trained, tmp_path):
    out, _ = trained
    query = "capital of france"
    disk = PolyEncoderScorer(str(out), dtype="float32", cache_dir=tmp_path / "codes")
    first = disk.score(query, DOCS)
    assert disk.cache.misses == len(DOCS) and disk.cache.hits == 0
    again = disk.score(query, DOCS)
    assert disk.cache.hits == len(DOCS)
    other_process = PolyEncoderScorer(str(out), dtype="float32", cache_dir=tmp_path / "codes")
    from_disk = other_process.score(query, DOCS)
    assert other_process.cache.misses == 0
    no_cache = PolyEncoderScorer(str(out), dtype="float32").score(query, DOCS)
    assert first == again == from_disk == no_cache
    # the stored (float16) codes change scores by rounding only: within 1e-2 of all-float32 math
    fresh = PolyEncoderScorer(str(out), dtype="float32")
    q = fresh.encode_query(query)
    codes = torch.stack(fresh.encode_documents(DOCS))
    exact = fresh._module.score(q.expand(len(DOCS), -1), codes).tolist()
    assert first == pytest.approx(exact, rel=1e-2, abs=1e-2)
    # indexing ahead of time: nothing left to encode when reranking
    indexed = PolyEncoderScorer(str(out), dtype="float32")
    assert indexed.index(DOCS + DOCS[:3]) == len(DOCS)
    assert indexed.index(DOCS) == 0
    assert indexed.score(query, DOCS) == first and indexed.cache.misses == len(DOCS)


def test_scores_do_not_depend_on_batching_or_order(trained):
    out, _ = trained
    small = PolyEncoderScorer(str(out), dtype="float32", batch_size=2)
    large = PolyEncoderScorer(str(out), dtype="float32", batch_size=32)
    assert small.score("heart and blood", DOCS[::-1]) == pytest.approx(
        large.score("heart and blood", DOCS)[::-1], abs=1e-3
    )


def test_an_untrained_poly_encoder_starts_as_mean_pooling(encoder):
    module = build_poly_encoder(str(encoder), codes=8, max_length=64).eval()
    ids, mask = pad_right(tokenize(module.tokenizer, ["the cat sat on the mat", "money"], 64), 0)
    with torch.no_grad():
        codes = module.document_codes(ids, mask)
        mean = module.query_vectors(ids, mask)  # mean of the token states
    assert codes.shape == (2, 8, mean.shape[-1])
    cosine = torch.nn.functional.cosine_similarity(codes, mean[:, None, :].expand_as(codes), dim=-1)
    assert float(cosine.min()) > 0.99, cosine


def test_through_every_strategy_and_the_adapters(trained):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import PolyEncoderRerank as LC
    from rerankers_plugins.integrations.llama_index import PolyEncoderRerank as LI

    out, _ = trained
    scorer = PolyEncoderScorer(str(out), dtype="float32")
    query = "interest rate of a bank loan"
    cands = [Candidate(t, id=str(i), retrieval_score=float(-i)) for i, t in enumerate(DOCS)]
    for strategy in (
        scorer,
        Threshold(scorer, relative=0.5),
        Selective(scorer, k=5),
        Cascade([Stage(FakeScorer(), keep=10), Stage(scorer, keep=3)]),
        Hybrid([Signal(scorer, 0.8), Signal("retrieval", 0.2)]),
    ):
        got = rerank(query, cands, strategy)
        assert len({s.candidate.id for s in got}) == len(got) <= len(cands)
    expected = [s.text for s in rerank(query, DOCS, scorer, top_n=3)]
    lc = LC(model=str(out), top_n=3, dtype="float32")
    assert [
        d.page_content for d in lc.compress_documents([Document(page_content=t) for t in DOCS], query)
    ] == (expected)
    li = LI(model=str(out), top_n=3, dtype="float32")
    nodes = li.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in DOCS], QueryBundle(query))
    assert [n.node.get_content() for n in nodes] == expected
    assert li.class_name() == "PolyEncoderRerank"


async def test_async(trained):
    out, _ = trained
    scorer = PolyEncoderScorer(str(out), dtype="float32")
    sync = [s.score for s in rerank("capital of germany", DOCS, scorer)]
    assert [s.score for s in await arerank("capital of germany", DOCS, scorer)] == sync


def test_an_interrupted_poly_encoder_run_resumes(beir, encoder, tmp_path, caplog):
    out = tmp_path / "run"
    kw = {"arch": "poly-encoder", "codes": 2, "max_steps": 10, "save_steps": 5, **FAST}
    with pytest.raises(KeyboardInterrupt):
        fine_tune(beir, str(encoder), out, callbacks=[Interrupt()], **kw)
    assert (out / ".training" / "checkpoints" / "checkpoint-5").is_dir()
    with caplog.at_level(logging.WARNING):
        result = fine_tune(beir, str(encoder), out, **kw)
    assert result.resumed_from == "checkpoint-5" and result.steps == 10
    with pytest.raises(ConfigError, match="arch"):
        fine_tune(beir, str(encoder), tmp_path / "x", arch="bi-encoder")
    with pytest.raises(ConfigError, match="codes"):
        fine_tune(beir, str(encoder), tmp_path / "x", arch="poly-encoder", codes=0)


@pytest.mark.parametrize("loss", ["listwise", "margin-mse"])
def test_the_other_losses_train_a_poly_encoder(beir, encoder, tmp_path, loss):
    teacher = "bm25" if loss == "margin-mse" else None
    result = fine_tune(
        beir,
        str(encoder),
        tmp_path / loss,
        arch="poly-encoder",
        codes=2,
        max_steps=2,
        loss=loss,
        teacher=teacher,
        **FAST,
    )
    assert result.steps == 2 and result.first_loss is not None
    assert PolyEncoderScorer(str(tmp_path / loss)).score("capital of france", ["paris is the capital"])


def test_cli_trains_a_poly_encoder(beir, encoder, tmp_path, capsys):
    from rerankers_plugins.cli import main

    out = tmp_path / "cli"
    args = ["train", str(beir), "--base", str(encoder), "--out", str(out), "--arch", "poly-encoder"]
    args += ["--codes", "3", "--max-steps", "2", "--per-query", "2", "--depth", "4", "--batch-size", "8"]
    code = main([*args, "--max-length", "64", "--dev-depth", "5", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "poly-encoder" in text and "PolyEncoderScorer" in text
    assert PolyEncoderScorer(str(out)).codes == 3


def test_directories_that_are_not_poly_encoders_are_refused(encoder, tiny_ce_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"not a poly-encoder directory.*--arch poly-encoder"):
        PolyEncoderScorer(str(encoder))
    with pytest.raises(ConfigError, match="not a poly-encoder directory"):
        PolyEncoderScorer(str(tiny_ce_dir))
    with pytest.raises(BackendError, match="does not exist"):
        PolyEncoderScorer(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="query_length"):
        PolyEncoderScorer(str(encoder), query_length=1)
