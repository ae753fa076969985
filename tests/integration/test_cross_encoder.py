"""CrossEncoderScorer against real sentence-transformers, on tiny models built at test time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankers_plugins import BackendError, ConfigError, CrossEncoderScorer, ScoreScale, rerank

QUERY = "where do cats sit"


def varied(passages):
    # Different lengths in scrambled order so length sorting actually reorders the batches.
    return [passages[3], "cat " * 40, passages[0], "", passages[5], "dog mat " * 12, passages[1], "🙂 naïve"]


def test_fp32_parity_with_crossencoder_predict(tiny_ce_dir, tiny_ce, passages):
    texts = varied(passages)
    ours = tiny_ce.score(QUERY, texts)
    ref = CrossEncoder(str(tiny_ce_dir)).predict([(QUERY, t) for t in texts], batch_size=32)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert tiny_ce.scale is ScoreScale.PROBABILITY
    assert len(set(np.round(ours, 6))) > 4, "tiny model should give distinguishable scores"


def test_batching_by_length_restores_input_order(tiny_ce, passages):
    texts = varied(passages)
    scores = tiny_ce.score(QUERY, texts)  # batch_size=4: two length-sorted batches
    for i, t in enumerate(texts):
        assert tiny_ce.score(QUERY, [t])[0] == pytest.approx(scores[i], abs=1e-5)
    perm = [5, 2, 7, 0, 3, 1, 6, 4]
    permuted = tiny_ce.score(QUERY, [texts[i] for i in perm])
    np.testing.assert_allclose(permuted, [scores[i] for i in perm], atol=1e-5)


def test_token_budget_batches_give_the_same_scores(tiny_ce_dir, tiny_ce, passages):
    texts = varied(passages)
    tight = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", max_batch_tokens=40)
    assert tight.max_batch_tokens == 40
    np.testing.assert_allclose(tight.score(QUERY, texts), tiny_ce.score(QUERY, texts), atol=1e-5)
    import torch

    # "auto" on CPU: 1024 padded tokens per thread
    assert tiny_ce.max_batch_tokens == min(1024 * torch.get_num_threads(), 8192)
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        CrossEncoderScorer(str(tiny_ce_dir), max_batch_tokens=0)


def test_activation_none_gives_logits(tiny_ce_dir, tiny_ce, passages):
    raw = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", activation=None)
    assert raw.scale is ScoreScale.LOGIT
    logits = np.array(raw.score(QUERY, passages))
    probs = np.array(tiny_ce.score(QUERY, passages))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probs, atol=1e-6)
    ref = CrossEncoder(str(tiny_ce_dir), activation_fn=__import__("torch").nn.Identity())
    np.testing.assert_allclose(logits, ref.predict([(QUERY, t) for t in passages]), atol=1e-5)


def test_two_label_model_uses_relevant_class(tiny_ce2_dir, passages):
    prob = CrossEncoderScorer(str(tiny_ce2_dir), dtype="float32")
    ref = CrossEncoder(str(tiny_ce2_dir)).predict([(QUERY, t) for t in passages], apply_softmax=True)
    np.testing.assert_allclose(prob.score(QUERY, passages), ref[:, 1], atol=1e-5)
    assert all(0.0 <= s <= 1.0 for s in prob.score(QUERY, passages))


def test_bfloat16_agrees_with_float32(tiny_ce_dir, tiny_ce, passages):
    bf16 = CrossEncoderScorer(str(tiny_ce_dir), dtype="bfloat16")
    assert "bfloat16" in repr(bf16)
    np.testing.assert_allclose(bf16.score(QUERY, passages), tiny_ce.score(QUERY, passages), atol=2e-2)


def test_long_document_truncated_with_one_warning(tiny_ce_dir, caplog):
    scorer = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32")
    huge = " ".join(["retrieval"] * 20_000)
    with caplog.at_level(logging.WARNING):
        first = scorer.score(QUERY, [huge, "short cat"])
        again = scorer.score(QUERY, [huge])
    assert len(first) == 2 and np.isfinite(first).all()
    assert again[0] == pytest.approx(first[0], abs=1e-5)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert "128-token window" in warnings[0].getMessage()
    # truncation keeps the beginning: the same prefix scores the same
    prefix = " ".join(["retrieval"] * 200)
    assert scorer.score(QUERY, [prefix])[0] == pytest.approx(first[0], abs=1e-5)


def test_max_length_option_lowers_the_window(tiny_ce_dir):
    short = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", max_length=16)
    assert short.max_length == 16
    assert max(short.pair_lengths(QUERY, ["cat " * 100, "cat"])) == 16


def test_rerank_end_to_end_and_empty_texts(tiny_ce, passages):
    out = rerank(QUERY, ["", *passages], tiny_ce, top_n=3)
    assert len(out) == 3
    assert out[0].score >= out[1].score >= out[2].score
    assert out[0].details["model"] == tiny_ce.name


def test_bad_path_and_offline_hub_id_give_clear_errors(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        CrossEncoderScorer(str(tmp_path / "nope"))
    with pytest.raises(BackendError, match=r"pass its path instead of the id") as info:
        CrossEncoderScorer("cross-encoder/not-downloaded-here")
    assert "HF_HUB_OFFLINE=1" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="does not hold a loadable cross-encoder model"):
        CrossEncoderScorer(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"dtype": "float16", "device": "cpu"}, "not supported on CPU"),
        ({"activation": "softmax"}, "activation"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu:9"}, "not a valid torch device"),
    ],
)
def test_bad_options(tiny_ce_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CrossEncoderScorer(str(tiny_ce_dir), **kwargs)


def test_cuda_requested_without_gpu(tiny_ce_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        CrossEncoderScorer(str(tiny_ce_dir), device="cuda")


@pytest.mark.gpu
def test_cuda_auto_dtype_and_parity(tiny_ce_dir, tiny_ce, passages):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = CrossEncoderScorer(str(tiny_ce_dir))
    assert gpu.device.startswith("cuda")
    assert gpu.dtype in (torch.bfloat16, torch.float16)
    np.testing.assert_allclose(gpu.score(QUERY, passages), tiny_ce.score(QUERY, passages), atol=2e-2)
    gpu32 = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", device="cuda")
    np.testing.assert_allclose(gpu32.score(QUERY, passages), tiny_ce.score(QUERY, passages), atol=1e-4)


def test_features_are_those_sentence_transformers_builds(tiny_ce_dir, tiny_ce, passages):
    """Tokenized once and padded by us, each batch is exactly what CrossEncoder.preprocess makes,
    truncation included."""
    texts = [*varied(passages), " ".join(["retrieval"] * 400)]
    rows, over = tiny_ce._encode(QUERY, texts)
    assert over == 1
    ref_model = CrossEncoder(str(tiny_ce_dir))
    for batch in ([0, 1, 2], [8], [3, 8, 7], list(range(len(texts)))):
        ours = tiny_ce._collate(rows, batch)
        ref = ref_model.preprocess([(QUERY, texts[i]) for i in batch])
        assert set(ours) == {k for k in ref if k != "modality"}
        for key, value in ours.items():
            np.testing.assert_array_equal(value, ref[key].numpy(), err_msg=key)


def test_features_match_preprocess_with_left_padding_and_a_long_query(tiny_ce_dir, tmp_path, passages):
    import json
    import shutil

    left = tmp_path / "left"
    shutil.copytree(tiny_ce_dir, left)
    config = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    scorer = CrossEncoderScorer(str(left), dtype="float32")
    ref_model = CrossEncoder(str(left))
    assert ref_model.tokenizer.padding_side == "left"
    long_query = " ".join(["cat"] * 300)  # longer than the 128-token window on its own
    for query in (QUERY, long_query):
        texts = varied(passages)
        rows, _ = scorer._encode(query, texts)
        batch = list(range(len(texts)))
        ours = scorer._collate(rows, batch)
        ref = ref_model.preprocess([(query, t) for t in texts])
        for key, value in ours.items():
            np.testing.assert_array_equal(value, ref[key].numpy(), err_msg=f"{key} {query[:10]}")
    np.testing.assert_allclose(
        scorer.score(QUERY, passages), ref_model.predict([(QUERY, p) for p in passages]), atol=1e-5
    )
    assert scorer.pair_lengths(QUERY, []) == []


def test_each_call_tokenizes_its_pairs_once(tiny_ce_dir, passages):
    scorer = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", batch_size=2)
    tokenizer = scorer._tokenizer
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            calls.append(len(args[0]))
            return tokenizer(*args, **kwargs)

    scorer._tokenizer = Counting()
    scores = scorer.score(QUERY, passages)  # three batches of two
    assert calls == [len(passages)]
    scorer._tokenizer = tokenizer
    np.testing.assert_allclose(scores, scorer.score(QUERY, passages), atol=1e-6)


def test_warmup_changes_nothing_but_when_the_cost_is_paid(tiny_ce_dir, tiny_ce, passages, caplog):
    cold = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", warmup=False)
    np.testing.assert_allclose(cold.score(QUERY, passages), tiny_ce.score(QUERY, passages), atol=1e-6)
    # the warm-up pair does not use up the once-per-scorer truncation warning
    warm = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", warmup=True, max_length=16)
    with caplog.at_level(logging.WARNING):
        warm.score(QUERY, [" ".join(["cat"] * 40)])
    assert "truncated" in caplog.text
