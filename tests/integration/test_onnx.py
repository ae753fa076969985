"""CrossEncoderScorer(runtime="onnx" | "onnx-int8"): ONNX Runtime over the same tiny checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rerankers_plugins import ConfigError, CrossEncoderScorer, ScoreScale, rerank
from rerankers_plugins.integrations.langchain import CrossEncoderRerank

QUERY = "where do cats sit"


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-cache")
    old = os.environ.get("RERANKERS_CACHE")
    os.environ["RERANKERS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RERANKERS_CACHE", None)
    else:
        os.environ["RERANKERS_CACHE"] = old


def texts(passages):
    return [*passages, "cat " * 60, "", "dog mat " * 12, " ".join(["retrieval"] * 300)]


def test_onnx_float32_matches_torch(onnx_cache, tiny_ce_dir, tiny_ce, passages):
    scorer = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx", batch_size=3)
    assert scorer.runtime == "onnx" and "runtime='onnx'" in repr(scorer)
    assert scorer.onnx_path is not None and scorer.onnx_path.is_relative_to(onnx_cache)
    np.testing.assert_allclose(
        scorer.score(QUERY, texts(passages)), tiny_ce.score(QUERY, texts(passages)), atol=1e-5
    )


def test_onnx_int8_is_close_and_keeps_the_order(onnx_cache, tiny_ce_dir, passages):
    raw32 = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", activation=None)
    raw8 = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx-int8", activation=None)
    assert raw8.scale is ScoreScale.LOGIT
    a, b = np.array(raw32.score(QUERY, texts(passages))), np.array(raw8.score(QUERY, texts(passages)))
    spread = a.max() - a.min()
    assert not np.allclose(a, b, atol=1e-7), "int8 should not be bit-identical to float32"
    print("int8 vs float32: max diff / spread", np.abs(a - b).max() / spread, "corr", np.corrcoef(a, b)[0, 1])
    # a 32-wide random model is the hardest case for int8 (real models: see benchmarks/speed.py);
    # still, the quantised graph must be this model, not something else
    assert np.abs(a - b).max() < 0.3 * spread
    assert np.corrcoef(a, b)[0, 1] > 0.9
    probs = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx-int8").score(QUERY, texts(passages))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-b)), atol=1e-6)


def test_export_is_cached_on_disk(onnx_cache, tiny_ce_dir, passages):
    first = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx-int8")
    path = first.onnx_path
    stamp = path.stat().st_mtime_ns
    again = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx-int8")
    assert again.onnx_path == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no half-built leftovers
    assert first.score(QUERY, passages) == again.score(QUERY, passages)
    # float32 and int8 never share a cache entry, here or in CachedScorer keys
    assert CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx").onnx_path != path
    assert first.fingerprint()["runtime"] == "onnx-int8"
    assert "runtime" not in CrossEncoderScorer(str(tiny_ce_dir), dtype="float32").fingerprint()


def test_onnx_backend_in_rerank_and_the_langchain_convenience(onnx_cache, tiny_ce_dir, passages):
    from langchain_core.documents import Document

    scorer = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx")
    out = rerank(QUERY, passages, scorer, top_n=3)
    assert len(out) == 3 and out[0].score >= out[1].score >= out[2].score
    compressor = CrossEncoderRerank(model=str(tiny_ce_dir), runtime="onnx", top_n=3)
    docs = compressor.compress_documents([Document(page_content=p) for p in passages], QUERY)
    assert [d.page_content for d in docs] == [s.candidate.text for s in out]


def test_cache_key_follows_the_weights_not_the_path(onnx_cache, tiny_ce_dir, tmp_path, passages):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    original = CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ce_dir, copy)
    assert CrossEncoderScorer(str(copy), runtime="onnx").onnx_path == original.onnx_path
    model = AutoModelForSequenceClassification.from_pretrained(str(copy))
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)  # same files, same config, different weights
    model.save_pretrained(str(copy))
    changed = CrossEncoderScorer(str(copy), runtime="onnx")
    assert changed.onnx_path != original.onnx_path
    torch_scores = CrossEncoderScorer(str(copy), dtype="float32").score(QUERY, passages)
    np.testing.assert_allclose(changed.score(QUERY, passages), torch_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"runtime": "tensorrt"}, "runtime must be one of"),
        ({"runtime": "onnx", "dtype": "bfloat16"}, "sets its own precision"),
    ],
)
def test_bad_backend_options(tiny_ce_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CrossEncoderScorer(str(tiny_ce_dir), **kwargs)


def test_the_old_option_name_backend_still_works_with_a_warning(onnx_cache, tiny_ce_dir):
    # "backend" names a registry entry; the ONNX switch is runtime= (removed in the release named)
    with pytest.warns(
        FutureWarning, match=r"CrossEncoderScorer\(backend=\.\.\.\) is now runtime=.*removed in"
    ):
        scorer = CrossEncoderScorer(str(tiny_ce_dir), backend="onnx")
    assert scorer.runtime == "onnx"
    with pytest.warns(FutureWarning, match="CrossEncoderScorer.backend is now CrossEncoderScorer.runtime"):
        assert scorer.backend == "onnx"
