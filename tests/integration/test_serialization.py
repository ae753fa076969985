"""Adapters and scorers as the frameworks' users copy, pickle and serialize them."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from deps import dev

from rerankers_plugins import (
    BiEncoderScorer,
    ColBERTScorer,
    ConfigError,
    CrossEncoderScorer,
    FakeScorer,
    LLMPointwiseScorer,
)
from rerankers_plugins.integrations import langchain as lc
from rerankers_plugins.integrations import llama_index as li

TEXTS = ["Paris is the capital of France.", "The cat sat on the mat.", "Berlin is the capital of Germany."]


def _scores(scorer):
    return scorer.score("capital of france", TEXTS)


@pytest.mark.parametrize("make", ["cross-encoder", "bi-encoder", "colbert"])
def test_local_scorers_pickle_and_deepcopy_by_their_settings(make, tiny_ce_dir, tiny_bi_dir):
    scorer = {
        "cross-encoder": lambda: CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", batch_size=2),
        "bi-encoder": lambda: BiEncoderScorer(str(tiny_bi_dir), dtype="float32"),
        "colbert": lambda: ColBERTScorer(str(tiny_bi_dir), dtype="float32"),
    }[make]()
    for clone in (copy.deepcopy(scorer), pickle.loads(pickle.dumps(scorer))):
        assert type(clone) is type(scorer) and clone is not scorer
        assert clone.fingerprint() == scorer.fingerprint()
        assert _scores(clone) == pytest.approx(_scores(scorer), abs=1e-6)


def test_adapters_holding_local_models_pickle_and_deepcopy(tiny_bi_dir, tiny_ce_dir):
    """langchain's and llama-index's own rerankers copy and pickle; so do ours (the model is reloaded)."""
    for adapter in (
        lc.BiEncoderRerank(str(tiny_bi_dir), top_n=2),
        li.CrossEncoderRerank(str(tiny_ce_dir), top_n=2),
        lc.RerankCompressor(scorer=CrossEncoderScorer(str(tiny_ce_dir), dtype="float32")),
    ):
        for clone in (copy.deepcopy(adapter), pickle.loads(pickle.dumps(adapter))):
            assert clone.scorer is not adapter.scorer
            assert _scores(clone.scorer) == pytest.approx(_scores(adapter.scorer), abs=1e-6)


def test_llama_index_to_dict_to_json_from_dict_rebuild_an_equal_postprocessor(tiny_ce_dir):
    for post in (
        li.RerankPostprocessor(scorer=CrossEncoderScorer(str(tiny_ce_dir), dtype="float32"), top_n=3),
        li.CrossEncoderRerank(str(tiny_ce_dir), top_n=2, max_length=64),
        li.RerankPostprocessor(scorer=FakeScorer(), threshold=0.5, include_details=False),
    ):
        data = post.to_dict()
        assert json.loads(post.to_json()) == data
        again = type(post).from_dict(data)
        assert again.to_dict() == data and again.scorer is not post.scorer
        assert _scores(again.scorer) == pytest.approx(_scores(post.scorer), abs=1e-6)
    described = li.RerankPostprocessor(scorer=CrossEncoderScorer(str(tiny_ce_dir), dtype="float32")).to_dict()
    assert described["scorer"] == {
        "backend": "cross-encoder",
        "options": {"model": str(tiny_ce_dir), "dtype": "float32"},
    }


def test_langchain_model_dump_json_round_trips(tiny_ce_dir):
    for compressor in (
        lc.RerankCompressor(scorer=CrossEncoderScorer(str(tiny_ce_dir), dtype="float32"), top_n=2),
        lc.CrossEncoderRerank(str(tiny_ce_dir), top_n=1),
    ):
        dumped = json.loads(compressor.model_dump_json())
        assert dumped == json.loads(json.dumps(compressor.model_dump()))
        again = type(compressor)(**dumped)
        assert again.model_dump() == compressor.model_dump()


def test_keys_never_reach_the_json(monkeypatch):
    dev("cohere")
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    post = li.CohereRerank(model="rerank-v3.5", api_key="sk-secret-123")
    assert "sk-secret" not in post.to_json() and "api_key" not in post.to_dict()
    from rerankers_plugins import CohereScorer

    compressor = lc.RerankCompressor(scorer=CohereScorer(api_key="sk-secret-456"))
    text = compressor.model_dump_json()
    assert "sk-secret" not in text and json.loads(text)["scorer"] == {"backend": "cohere", "options": {}}


def test_a_scorer_that_cannot_be_described_is_named(tiny_ce_dir):
    post = li.RerankPostprocessor(scorer=LLMPointwiseScorer(lambda messages: "yes"))
    with pytest.raises(ConfigError, match=r"LLMPointwiseScorer .* cannot be described as settings"):
        post.to_json()
    from rerankers_plugins import Threshold

    compressor = lc.RerankCompressor(scorer=Threshold(CrossEncoderScorer(str(tiny_ce_dir)), absolute=0.1))
    with pytest.raises(ConfigError, match="cannot be described"):
        compressor.model_dump_json()


def test_a_url_with_credentials_is_never_written_out():
    from rerankers_plugins import RemoteScorer

    scorer = RemoteScorer("http://user:s3cret-pw@127.0.0.1:9/")
    assert "s3cret" not in str(vars(scorer))
    with pytest.raises(ConfigError, match="holds credentials"):
        lc.RerankCompressor(scorer=scorer).model_dump_json()
