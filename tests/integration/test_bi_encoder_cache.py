"""BiEncoderScorer's document-embedding cache: a warm query encodes only itself, and its scores are
the uncached ones (the model's own embeddings, cosine), whatever the candidates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankers_plugins import BiEncoderScorer, Candidate, DocumentTemplate, rerank
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.harness import index_pool
from tests.tiny import build_bi_encoder

QUERY = "where do cats sit"


def uncached(scorer: BiEncoderScorer, query: str, texts: list[str]) -> list[float]:
    """The scores as defined: cosine of the model's query and document embeddings, no cache."""
    docs = scorer.embed_documents(texts).numpy()
    return list(docs @ scorer.embed_query(query).numpy())


def test_a_warm_query_encodes_only_itself(tiny_bi, passages):
    first = tiny_bi.score(QUERY, passages)
    misses, encoded = tiny_bi.cache.misses, len(tiny_bi.cache)
    assert encoded == len(set(passages))
    second = tiny_bi.score("a capital city", passages)
    assert tiny_bi.cache.misses == misses  # no document was encoded again
    assert len(tiny_bi.cache) == encoded
    np.testing.assert_allclose(first, uncached(tiny_bi, QUERY, passages), atol=1e-6)
    np.testing.assert_allclose(second, uncached(tiny_bi, "a capital city", passages), atol=1e-6)
    # a repeated call, now fully cached, gives the very same numbers
    assert tiny_bi.score(QUERY, passages) == first


def test_index_encodes_each_text_once(tiny_bi, passages):
    assert tiny_bi.index([*passages, passages[0]]) == len(set(passages))
    assert tiny_bi.index(passages) == 0
    misses = tiny_bi.cache.misses
    tiny_bi.score(QUERY, passages)
    assert tiny_bi.cache.misses == misses


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.lists(st.integers(0, 7), min_size=1, max_size=12),
    warm=st.lists(st.integers(0, 7), max_size=8),
)
def test_cached_scores_equal_uncached_whatever_was_seen_before(tiny_bi, order, warm):
    pool = ["a cat", "the cat sat on the mat", "", "dogs bark", "Paris is a city", "é ü", "cat cat cat", " "]
    tiny_bi.score("anything", [pool[i] for i in warm] or ["x"])  # some candidates cached, some not
    texts = [pool[i] for i in order]  # duplicates and empty texts included
    got = tiny_bi.score(QUERY, texts)
    assert len(got) == len(texts)
    np.testing.assert_allclose(got, uncached(tiny_bi, QUERY, texts), atol=1e-6)


def test_the_disk_cache_serves_a_new_scorer_and_never_a_retrained_model(tmp_path, passages):
    path = build_bi_encoder(tmp_path / "model", seed=0)
    cache = tmp_path / "cache"
    first = BiEncoderScorer(str(path), dtype="float32", cache_dir=cache)
    assert first.index(passages) == len(passages)
    expected, before = first.score(QUERY, passages), first.fingerprint()
    second = BiEncoderScorer(str(path), dtype="float32", cache_dir=cache)
    assert second.score(QUERY, passages) == pytest.approx(expected, abs=1e-6)
    assert second.cache.misses == 0
    retrained = build_bi_encoder(tmp_path / "retrained", seed=1)
    for weights in retrained.rglob("model.safetensors"):  # new weights under the same file names
        shutil.copyfile(weights, path / weights.relative_to(retrained))
    third = BiEncoderScorer(str(path), dtype="float32", cache_dir=cache)
    scores = third.score(QUERY, passages)
    assert third.cache.misses == len(passages)  # encoded again, not read from the old entries
    assert scores != pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(scores, uncached(third, QUERY, passages), atol=1e-6)
    assert third.fingerprint() != before


def test_another_document_prompt_is_another_cache(tiny_bi_dir, tmp_path, passages):
    cache = tmp_path / "cache"
    plain = BiEncoderScorer(str(tiny_bi_dir), dtype="float32", cache_dir=cache)
    plain.score(QUERY, passages)
    prompted = BiEncoderScorer(
        str(tiny_bi_dir), dtype="float32", cache_dir=cache, document_prompt="passage: "
    )
    scores = prompted.score(QUERY, passages)
    assert prompted.cache.misses == len(passages)
    np.testing.assert_allclose(scores, uncached(prompted, QUERY, passages), atol=1e-6)
    assert prompted.cache.model_key != plain.cache.model_key


def test_a_template_is_cached_as_the_model_reads_it(tiny_bi):
    cands = [
        Candidate(t, id=str(i), metadata={"title": f"Title {i}"}) for i, t in enumerate(["a cat", "a dog"])
    ]
    template = DocumentTemplate("{title}: {text}")
    templated = type(tiny_bi)(tiny_bi.model, dtype="float32", document_template=template)
    out = rerank(QUERY, cands, templated)
    filled = ["Title 0: a cat", "Title 1: a dog"]
    expected = uncached(templated, QUERY, filled)
    assert {s.candidate.id: s.score for s in out} == pytest.approx(
        {"0": expected[0], "1": expected[1]}, abs=1e-6
    )
    assert templated.cache.get(templated.cache.key(filled[0])) is not None
    assert templated.cache.get(templated.cache.key("a cat")) is None


def test_a_float16_cache_is_declared_in_the_fingerprint(tiny_bi_dir, passages):
    half = BiEncoderScorer(str(tiny_bi_dir), dtype="float32", cache_dtype="float16")
    full = BiEncoderScorer(str(tiny_bi_dir), dtype="float32")
    assert full.cache_dtype == "float32"
    assert half.fingerprint() != full.fingerprint()
    np.testing.assert_allclose(half.score(QUERY, passages), full.score(QUERY, passages), atol=2e-3)
    with pytest.raises(ConfigError, match="cache_dtype"):
        BiEncoderScorer(str(tiny_bi_dir), cache_dtype="int8")  # type: ignore[arg-type]


def test_evaluation_indexes_the_pool_before_timing(tiny_bi, passages):
    pool = [Candidate(t, id=str(i)) for i, t in enumerate(passages)]
    spent = index_pool("bi", tiny_bi, pool)
    assert spent > 0
    assert len(tiny_bi.cache) == len(set(passages))
    misses = tiny_bi.cache.misses
    tiny_bi.score(QUERY, passages)
    assert tiny_bi.cache.misses == misses


def test_load_options_that_change_embeddings_are_another_cache(tiny_bi_dir, tmp_path):
    plain = BiEncoderScorer(str(tiny_bi_dir), dtype="float32", cache_dir=tmp_path)
    lowered = BiEncoderScorer(
        str(tiny_bi_dir), dtype="float32", cache_dir=tmp_path, tokenizer_kwargs={"do_lower_case": False}
    )
    assert lowered.cache.model_key != plain.cache.model_key


def test_a_cached_vector_does_not_hold_its_whole_batch(tiny_bi, passages):
    tiny_bi.score(QUERY, passages)
    stored = tiny_bi.cache.get(tiny_bi.cache.key(passages[0]))
    assert stored.untyped_storage().nbytes() == stored.numel() * stored.element_size()
