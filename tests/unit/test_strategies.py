"""Strategies over any scorer: thresholds, selective, cascade, hybrid, calibration, caching, long documents."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    BM25Scorer,
    CachedScorer,
    Calibrated,
    Candidate,
    Cascade,
    ConfigError,
    FakeScorer,
    Hybrid,
    LongDocument,
    Selective,
    Signal,
    Stage,
    Threshold,
    arerank,
    calibrate,
    rerank,
)
from rerankers_plugins.ops.calibration import expected_calibration_error
from rerankers_plugins.ops.fusion import minmax, ranks, rrf, zscore
from rerankers_plugins.types import ScoreScale


class Table(BaseScorer):
    """Scores looked up by text; counts calls and texts scored."""

    def __init__(
        self, table: dict[str, float], scale: ScoreScale = ScoreScale.PROBABILITY, name: str = "table"
    ) -> None:
        self.table, self.scale, self.name = table, scale, name
        self.calls = 0
        self.seen: list[list[str]] = []
        self._lock = threading.Lock()

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls += 1
            self.seen.append(list(texts))
        return [self.table.get(t, 0.0) for t in texts]


class Order:
    """A listwise ranker returning a fixed preference (RANK_ONLY)."""

    name = "order"

    def __init__(self, preferred: list[str]) -> None:
        self.preferred = preferred

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return sorted(
            range(len(texts)),
            key=lambda i: self.preferred.index(texts[i]) if texts[i] in self.preferred else 99,
        )


TEXTS = ["a", "b", "c", "d", "e"]
PROBS = {"a": 0.2, "b": 0.9, "c": 0.55, "d": 0.8, "e": 0.1}


def texts(result):
    return [s.text for s in result]


# -- thresholds ---------------------------------------------------------------------------------


def test_threshold_absolute_relative_and_min_keep():
    s = Table(PROBS)
    assert texts(rerank("q", TEXTS, Threshold(s, absolute=0.5))) == ["b", "d", "c"]
    assert texts(rerank("q", TEXTS, Threshold(s, relative=0.2))) == ["b", "d"]
    assert texts(rerank("q", TEXTS, Threshold(s, absolute=0.95, min_keep=2))) == ["b", "d"]
    assert texts(rerank("q", TEXTS, Threshold(s, absolute=0.5), top_n=2)) == [
        "b",
        "d",
    ]  # threshold, then top_n


def test_threshold_means_the_same_on_every_probability_backend():
    other = Table({t: v for t, v in PROBS.items()}, name="other-backend")
    assert texts(rerank("q", TEXTS, Threshold(Table(PROBS), absolute=0.7))) == texts(
        rerank("q", TEXTS, Threshold(other, absolute=0.7))
    )


def test_threshold_refusals():
    with pytest.raises(ConfigError, match="RANK_ONLY"):
        Threshold(Order(TEXTS), absolute=0.5)
    with pytest.raises(ConfigError, match="outside the probability scale"):
        Threshold(Table(PROBS), absolute=3.0)
    with pytest.raises(ConfigError, match="relative"):
        Threshold(Table(PROBS), relative=-0.1)


# -- selective ----------------------------------------------------------------------------------


def test_selective_reranks_only_the_head():
    s = Table(PROBS)
    out = rerank("q", TEXTS, Selective(s, k=3))
    assert texts(out) == ["b", "c", "a", "d", "e"]  # head reranked, tail in first-stage order
    assert s.seen == [["a", "b", "c"]]
    assert [s.details.get("reranked", True) for s in out] == [True, True, True, False, False]
    dropped = rerank("q", TEXTS, Selective(s, k=3, rest="drop"))
    assert texts(dropped) == ["b", "c", "a"]


def test_selective_tail_is_not_cut_by_a_threshold():
    out = rerank("q", TEXTS, Selective(Table(PROBS), k=3), threshold=0.5)
    assert texts(out) == ["b", "c", "d", "e"]  # 'a' (0.2) fails; the unscored tail stays


def test_selective_gate_skips_the_model(caplog):
    s = Table(PROBS)
    cands = [
        Candidate(t, id=t, retrieval_score=r) for t, r in zip(TEXTS, [9.0, 3.0, 2.0, 1.0, 0.5], strict=True)
    ]
    with caplog.at_level(logging.INFO):
        out = rerank("q", cands, Selective(s, k=3, skip_if_margin=5.0))
    assert texts(out) == TEXTS and s.calls == 0
    assert "reranking skipped (retrieval margin 6 >= 5.0)" in caplog.text
    assert texts(rerank("q", cands, Selective(s, k=3, skip_if_margin=7.0))) == ["b", "c", "a", "d", "e"]
    with pytest.raises(ConfigError, match="retrieval_score"):
        rerank("q", TEXTS, Selective(s, skip_if_top=1.0))


# -- cascade ------------------------------------------------------------------------------------


def test_cascade_stages_keep_and_record():
    cheap = Table({t: v for t, v in zip(TEXTS, [0.9, 0.1, 0.8, 0.7, 0.6], strict=True)}, name="cheap")
    costly = Table(PROBS, name="costly")
    out = rerank("q", TEXTS, Cascade([Stage(cheap, keep=3), Stage(costly, keep=2)]))
    assert costly.seen == [["a", "c", "d"]]  # only the cheap stage's best 3
    assert texts(out) == ["d", "c"]
    assert out[0].details["stages"] == {"cheap": 0.7, "costly": 0.8}
    assert out[0].details["stage_reached"] == "costly"
    assert set(out[0].details["stage_ms"]) == {"cheap", "costly"}
    assert out[0].details["scale"] == "probability"


def test_cascade_stage_threshold_and_listwise_last_stage():
    cheap = Table(PROBS, name="cheap")
    out = rerank("q", TEXTS, Cascade([Stage(cheap, threshold=0.5), Stage(Order(["c", "d", "b"]), keep=2)]))
    assert texts(out) == ["c", "d"]
    with pytest.raises(ConfigError, match="RANK_ONLY"):
        rerank("q", TEXTS, Cascade([Stage(cheap), Stage(Order(TEXTS))]), threshold=0.5)


def test_cascade_refuses_a_stage_keeping_more_than_it_receives():
    with pytest.raises(ConfigError, match=r"stage 2 \(b\) keeps 100 but receives at most 50"):
        Cascade([Stage(Table(PROBS), keep=50, name="a"), Stage(Table(PROBS), keep=100, name="b")])
    with pytest.raises(ConfigError, match="unique"):
        Cascade([Stage(Table(PROBS)), Stage(Table(PROBS))])
    with pytest.raises(ConfigError, match="outside"):
        Cascade([Stage(Table(PROBS), threshold=2.0)])


async def test_cascade_async_matches_sync():
    c = Cascade([Stage(FakeScorer(), keep=3, name="one"), Stage(Table(PROBS), keep=2, name="two")])
    assert texts(await arerank("a b", TEXTS, c)) == texts(rerank("a b", TEXTS, c))


# -- hybrid -------------------------------------------------------------------------------------


def test_fusion_ops():
    assert minmax([1.0, 3.0]) == [0.0, 1.0]
    assert zscore([5.0, 5.0]) == [0.0, 0.0]
    assert ranks([1.0, 3.0, 2.0]) == [3, 1, 2]
    assert rrf([[1.0, 3.0]], [1.0], k=0) == [0.5, 1.0]


def test_hybrid_seed_case_weights_and_details():
    docs = [
        Candidate("apple pie recipe", id="1", metadata={"trust": 0.1}),
        Candidate("red apple orchard apple", id="2", metadata={"trust": 0.9}),
        Candidate("banana", id="3", metadata={"trust": 1.0}),
    ]
    ce = Table({"apple pie recipe": 0.9, "red apple orchard apple": 0.5, "banana": 0.1}, name="ce")
    hybrid = Hybrid(
        [Signal(ce, 0.6), Signal(BM25Scorer(), 0.2), Signal(lambda c: c.metadata["trust"], 0.2, name="trust")]
    )
    out = rerank("red apple", docs, hybrid)
    # ce minmax [1, .5, 0]; bm25 minmax [a, 1, 0] with a < 1; trust minmax [0, .889, 1]
    assert texts(out)[0] == "red apple orchard apple"
    d = out[0].details
    assert d["signals"]["trust"] == 0.9 and d["normalized"]["ce"] == pytest.approx(0.5)
    assert hybrid.scale is ScoreScale.RELEVANCE
    assert all(0.0 <= s.score <= 1.0 for s in out)


def test_hybrid_weights_normalised_and_refused(caplog):
    with caplog.at_level(logging.INFO):
        h = Hybrid([Signal(Table(PROBS), 3), Signal("retrieval", 1)])
    assert h.weights == [0.75, 0.25]
    assert "sum to 4; normalised" in caplog.text
    for bad, match in (
        ([Signal(Table(PROBS), -1)], ">= 0"),
        ([Signal(Table(PROBS), 0)], "all 0"),
        ([Signal("bm25", 1)], "only string source"),
        ([Signal(Order(TEXTS), 1)], "RANK_ONLY"),
    ):
        with pytest.raises(ConfigError, match=match):
            Hybrid(bad)


@pytest.mark.parametrize("method", ["weighted", "rrf"])
def test_hybrid_weights_whose_sum_overflows_are_refused(method):
    for weights in ([1e308, 1e308], [1.7e308, 1.7e308, 0.0], [float.fromhex("0x1.fffffffffffffp+1023")] * 3):
        signals = [Signal(Table(PROBS, name=f"s{i}"), w) for i, w in enumerate(weights)]
        with pytest.raises(ConfigError, match=r"Hybrid weights \{'s0': [\d.]+e\+308.* overflows"):
            Hybrid(signals, method=method)
    # finite sums of huge or tiny weights still normalise to their ratios
    big = Hybrid(
        [Signal(Table(PROBS, name="a"), 1e308), Signal(Table(PROBS, name="b"), 3e307)], method=method
    )
    assert big.weights == pytest.approx([1e308 / 1.3e308, 3e307 / 1.3e308])
    tiny = Hybrid(
        [Signal(Table(PROBS, name="a"), 5e-324), Signal(Table(PROBS, name="b"), 5e-324)], method=method
    )
    assert tiny.weights == [0.5, 0.5]


def test_hybrid_rrf_and_retrieval_signal_with_deterministic_ties():
    cands = [Candidate(t, id=t, retrieval_score=r) for t, r in zip(TEXTS, [5, 4, 3, 2, 1], strict=True)]
    flat = Table(dict.fromkeys(TEXTS, 0.5))
    out = rerank("q", cands, Hybrid([Signal(flat, 1), Signal("retrieval", 1)], method="rrf"))
    assert texts(out) == TEXTS  # the flat signal ties everywhere: input order decides
    mixed = [Candidate("a", retrieval_score=1.0), Candidate("b")]
    with pytest.raises(ConfigError, match="have no retrieval_score while others do"):
        rerank("q", mixed, Hybrid([Signal("retrieval", 1)]))


def test_retrieval_signal_without_scores_is_the_first_stage_rank():
    """Behind a retriever that puts no score in metadata (FAISS, in-memory vector stores) the
    retrieval signal is the first stage's order, so a fusion still works and still counts it."""
    scores = dict(zip(TEXTS, [0.1, 0.9, 0.8, 0.7, 0.2], strict=True))
    alone = rerank("q", TEXTS, Hybrid([Signal("retrieval", 1)]))
    assert texts(alone) == TEXTS
    fused = rerank("q", TEXTS, Hybrid([Signal(Table(scores), 0.5), Signal("retrieval", 0.5)]))
    by_model = rerank("q", TEXTS, Table(scores))
    assert texts(fused) != texts(by_model) and texts(fused)[0] == TEXTS[1]
    assert [s.details["signals"]["retrieval"] for s in fused] == [
        -float(TEXTS.index(t)) for t in texts(fused)
    ]


def test_hybrid_metadata_failure_names_the_signal():
    with pytest.raises(ConfigError, match=r"metadata signal 'recency' failed on candidate '0': KeyError"):
        rerank("q", ["x"], Hybrid([Signal(lambda c: c.metadata["date"], 1, name="recency")]))


# -- scorer NaN ---------------------------------------------------------------------------------


def test_nan_inside_a_strategy_names_the_scorer():
    bad = Table({"a": math.nan}, name="broken-model")
    for strategy in (Threshold(bad, absolute=0.1), Cascade([Stage(bad)]), Hybrid([Signal(bad, 1)])):
        with pytest.raises(BackendError, match="'broken-model' returned non-finite"):
            rerank("q", ["a", "b"], strategy)


# -- calibration --------------------------------------------------------------------------------


def test_calibration_fits_saves_loads_and_improves_ece(tmp_path):
    # An overconfident logit scorer: true P(relevant | raw) = sigmoid(raw / 4).
    import random

    rng = random.Random(0)
    table, pairs = {}, []
    for i in range(600):
        raw = rng.uniform(-8, 8)
        text = f"doc{i}"
        table[text] = raw
        pairs.append((f"q{i % 20}", text, int(rng.random() < 1 / (1 + math.exp(-raw / 4)))))
    scorer = Table(table, scale=ScoreScale.LOGIT, name="overconfident")
    for method in ("platt", "temperature"):
        cal = calibrate(scorer, pairs, method=method)
        assert cal.report["ece_after"] < cal.report["ece_before"] / 2
        assert cal.scale is ScoreScale.PROBABILITY
        path = tmp_path / f"{method}.json"
        cal.save(path)
        again = Calibrated.load(path, scorer)
        assert again.score("q", ["doc1", "doc2"]) == cal.score("q", ["doc1", "doc2"])
    assert json.loads((tmp_path / "temperature.json").read_text())["params"]["temperature"] == pytest.approx(
        4, rel=0.3
    )
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0


def test_calibration_refuses_a_single_class():
    with pytest.raises(ConfigError, match="found labels \\[1\\]"):
        calibrate(Table(PROBS), [("q", "a", 1), ("q", "b", 1)])
    with pytest.raises(ConfigError, match="RANK_ONLY"):
        calibrate(Order(TEXTS), [("q", "a", 1), ("q", "b", 0)])


# -- caching ------------------------------------------------------------------------------------


def test_cache_repeat_query_costs_no_model_call(tmp_path):
    inner = Table(PROBS)
    cached = CachedScorer(inner, path=tmp_path / "scores.sqlite")
    first = rerank("q", TEXTS, cached)
    assert inner.calls == 1 and cached.misses == 5
    second = rerank("q", TEXTS, cached)
    assert inner.calls == 1 and cached.hits == 5
    assert [(s.text, s.score) for s in first] == [(s.text, s.score) for s in second]
    rerank("q", [*TEXTS, "new"], cached)
    assert inner.seen[-1] == ["new"]
    # a new process (a new object) reads the persistent store
    fresh_inner = Table(PROBS)
    fresh = CachedScorer(fresh_inner, path=tmp_path / "scores.sqlite")
    assert fresh.score("q", TEXTS) == inner.score("q", TEXTS) and fresh_inner.calls == 0


def test_cache_bound_and_unhashable_metadata():
    inner = Table(PROBS)
    cached = CachedScorer(inner, max_entries=2)
    cands = [Candidate(t, id=t, metadata={"tags": [t], "nested": {"x": [1]}}) for t in TEXTS]
    assert texts(rerank("q", cands, cached, top_n=1)) == ["b"]
    assert len(cached._memory) == 2
    with pytest.raises(ConfigError, match="RANK_ONLY"):
        CachedScorer(Order(TEXTS))


async def test_cache_thread_and_async_safe():
    inner = Table(PROBS)
    cached = CachedScorer(inner)
    results = await asyncio.gather(*(cached.ascore("q", TEXTS) for _ in range(50)))
    assert all(r == results[0] for r in results)
    threads = [threading.Thread(target=cached.score, args=("q2", TEXTS)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cached.score("q2", TEXTS) == [PROBS[t] for t in TEXTS]
    assert cached.hits + cached.misses == 50 * 5 + 8 * 5 + 5


# -- long documents -----------------------------------------------------------------------------


def test_long_document_scores_the_best_passage():
    body = " ".join(["filler"] * 30) + " red apple " + " ".join(["filler"] * 30)
    scorer = LongDocument(FakeScorer(), max_words=10, overlap=2)
    out = rerank("red apple", [body, "red"], scorer)
    assert out[0].text == body and out[0].score == 1.0
    assert out[0].details["passages"] == 8 and out[0].details["passage_start_word"] == 24
    first = rerank(
        "red apple", [body], LongDocument(FakeScorer(), max_words=10, overlap=2, aggregate="first")
    )
    assert first[0].score == 0.0
    mean = rerank("red apple", [body], LongDocument(FakeScorer(), max_words=10, overlap=2, aggregate="mean"))
    assert 0.0 < mean[0].score < 1.0


# -- every strategy through both adapters -------------------------------------------------------


STRATEGIES = {
    "threshold": lambda: Threshold(FakeScorer(), absolute=0.4),
    "selective": lambda: Selective(FakeScorer(), k=3),
    "cascade": lambda: Cascade([Stage(BM25Scorer(), keep=4), Stage(FakeScorer(), keep=2)]),
    "hybrid": lambda: Hybrid([Signal(FakeScorer(), 0.7), Signal(BM25Scorer(), 0.3)]),
    "cached": lambda: CachedScorer(FakeScorer()),
    "long": lambda: LongDocument(FakeScorer(), max_words=4, overlap=1),
}
DOCS = ["red apple pie", "green apple", "banana split", "red car", "apple tree red fruit", "plain text"]


@pytest.mark.parametrize("name", STRATEGIES)
async def test_strategy_in_both_adapters(name):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    strategy = STRATEGIES[name]()
    core = [s.text for s in rerank("red apple", DOCS, strategy, top_n=3)]
    lc = RerankCompressor(scorer=strategy, top_n=3)
    docs = [Document(page_content=d) for d in DOCS]
    assert [d.page_content for d in lc.compress_documents(docs, "red apple")] == core
    assert [d.page_content for d in await lc.acompress_documents(docs, "red apple")] == core
    li = RerankPostprocessor(scorer=strategy, top_n=3)
    nodes = [NodeWithScore(node=TextNode(text=d), score=1.0) for d in DOCS]
    assert [n.node.get_content() for n in li.postprocess_nodes(nodes, query_str="red apple")] == core
    assert [n.node.get_content() for n in await li.apostprocess_nodes(nodes, query_str="red apple")] == core


def test_a_failing_metadata_signal_names_the_candidate_by_position_when_it_has_no_id():
    from rerankers_plugins import Candidate, ConfigError, FakeScorer, Hybrid, Signal, rerank

    hybrid = Hybrid([Signal(FakeScorer(), 0.5), Signal(lambda c: c.metadata["trust"], 0.5, name="trust")])
    candidates = [Candidate("red apple", metadata={"trust": 1.0}), Candidate("green apple")]
    with pytest.raises(ConfigError, match="failed on candidate at position 1: KeyError"):
        rerank("red apple", candidates, hybrid)
    with pytest.raises(ConfigError, match="failed on candidate 'b': KeyError"):
        rerank("red apple", [Candidate("x", id="a", metadata={"trust": 1}), Candidate("y", id="b")], hybrid)


def test_a_strategy_that_declares_no_scale_says_so() -> None:
    # a strategy's scale decides what thresholds on it mean: it never silently defaults to LOGIT
    from rerankers_plugins import Strategy

    class NoScale(Strategy):
        def run(self, query, ranking):
            return ranking

    with pytest.raises(AttributeError, match=r"NoScale declares no scale: set self\.scale"):
        _ = NoScale().scale


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_zscores_are_finite_and_standardised_at_any_magnitude(values):
    # fusion and distillation standardise raw scores: values 1e-300 apart, subnormals or near the
    # float limit must neither overflow nor collapse to a false "constant"
    import math

    from rerankers_plugins.ops.fusion import zscore

    z = zscore(values)
    assert len(z) == len(values) and all(math.isfinite(v) for v in z)
    if len(set(values)) == 1:
        assert z == [0.0] * len(values)
    else:
        assert abs(math.fsum(z) / len(z)) < 1e-9
        assert math.fsum(v * v for v in z) / len(z) == pytest.approx(1.0, rel=1e-6)
