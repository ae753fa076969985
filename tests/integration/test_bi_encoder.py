"""BiEncoderScorer: cosine similarity over real sentence-transformers models."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from rerankers_plugins import BackendError, BiEncoderScorer, ScoreScale, rerank


def test_cosine_matches_sentence_transformers(tiny_bi_dir, tiny_bi, passages):
    model = SentenceTransformer(str(tiny_bi_dir))
    q = model.encode(["where do cats sit"], normalize_embeddings=True)[0]
    d = model.encode(passages, normalize_embeddings=True)
    np.testing.assert_allclose(tiny_bi.score("where do cats sit", passages), d @ q, atol=1e-5)
    assert tiny_bi.scale is ScoreScale.SIMILARITY
    assert all(-1.0 <= s <= 1.0 for s in tiny_bi.score("x", passages))


def test_bi_encoder_in_rerank_with_similarity_threshold(tiny_bi, passages):
    scores = tiny_bi.score("capital city", passages)
    cut = sorted(scores)[-3]
    out = rerank("capital city", passages, tiny_bi, threshold=cut)
    assert len(out) == 3
    assert [s.score for s in out] == sorted(scores, reverse=True)[:3]


def test_bi_encoder_load_error(tmp_path):
    with pytest.raises(BackendError, match="sentence-transformers model directory"):
        BiEncoderScorer(str(tmp_path / "missing"))
