"""Named regressions: each nesting that used to give a silently wrong answer, and the other
guarantees of the composition contract (caching, copying, defaults, numpy arguments)."""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import multiprocessing
import pickle
import sqlite3
from collections.abc import Sequence

import numpy as np
import pytest

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    BM25Scorer,
    CachedScorer,
    Candidate,
    Cascade,
    ConfigError,
    Entry,
    FakeScorer,
    Hybrid,
    Ranking,
    Scored,
    ScoreScale,
    Selective,
    Signal,
    Stage,
    Strategy,
    Threshold,
    explain,
    rerank,
)

TEXTS = ["a", "b", "c", "d", "e"]


class Table(BaseScorer):
    def __init__(self, table: dict[str, float], name: str = "table") -> None:
        self.table, self.name, self.scale = table, name, ScoreScale.PROBABILITY
        self.seen: list[list[str]] = []

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.seen.append(list(texts))
        return [self.table[t] for t in texts]


class Down(BaseScorer):
    scale = ScoreScale.RELEVANCE
    name = "down"

    def __init__(self, on_error: str = "keep_order") -> None:
        self.on_error = on_error

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise BackendError("connection refused")


CHEAP = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1, "e": 0.2}
COSTLY = {"a": 0.2, "b": 0.6, "c": 0.9, "d": 0.95, "e": 0.99}


def ids(result) -> list[str]:
    return [s.text for s in result]


def test_threshold_around_cascade_never_revives_a_dropped_document():
    cascade = Cascade([Stage(Table(CHEAP, "cheap"), keep=3), Stage(Table(COSTLY, "costly"), keep=2)])
    ex = explain("q", TEXTS, Threshold(cascade, absolute=0.5))
    assert ids(ex.kept) == ["c", "b"]  # d and e score higher on `costly` but the cascade dropped them
    why = {s.text: s.details["dropped_by"] for s in ex.dropped}
    assert why == {"d": "cascade stage 'cheap'", "e": "cascade stage 'cheap'", "a": "cascade stage 'costly'"}


def test_threshold_without_cut_keeps_what_the_cascade_kept():
    cascade = Cascade([Stage(Table(CHEAP, "cheap"), keep=2), Stage(Table(COSTLY, "costly"))])
    assert ids(rerank("q", TEXTS, Threshold(cascade))) == ["b", "a"]


def test_threshold_around_selective_drop_returns_the_head_only():
    assert ids(rerank("q", TEXTS, Threshold(Selective(Table(CHEAP), k=2, rest="drop")))) == ["a", "b"]


def test_threshold_never_cuts_the_unreranked_tail():
    out = rerank("q", TEXTS, Threshold(Selective(Table(COSTLY), k=2), absolute=0.5))
    assert ids(out) == ["b", "c", "d", "e"]  # a (0.2) is cut; the tail c, d, e was never scored
    assert [s.details["reranked"] for s in out] == [True, False, False, False]


def test_hybrid_of_a_cascade_keeps_the_cascade_drops():
    cascade = Cascade([Stage(Table(CHEAP, "cheap"), keep=3), Stage(Table(COSTLY, "costly"), keep=2)])
    out = explain("q", TEXTS, Hybrid([Signal(cascade, 1.0)]))
    assert ids(out.kept) == ["c", "b"]
    assert sorted(ids(out.dropped)) == ["a", "d", "e"]


def test_nested_selective_tails_are_exempt_from_the_final_threshold():
    words = ["car", "red apple", "banana", "boat"]
    out = rerank("red apple", words, Selective(Selective(FakeScorer(), k=1), k=3), threshold=0.5)
    assert ids(out) == ["red apple", "banana", "boat"]  # only `car` was scored (0.0) and cut


@pytest.mark.parametrize(
    "strategy",
    [
        lambda f: Selective(f, k=1),
        lambda f: Hybrid([Signal(f, 0.5), Signal("retrieval", 0.5)]),
        lambda f: Threshold(f, absolute=0.9),
        lambda f: Cascade([Stage(f)]),
    ],
    ids=["selective", "hybrid", "threshold", "cascade"],
)
def test_cached_scorer_refuses_strategies(strategy):
    with pytest.raises(ConfigError, match="wrap the leaf"):
        CachedScorer(strategy(FakeScorer()))


def test_cached_scorer_refuses_rankers_and_list_dependent_scorers():
    class Order:
        name = "order"

        def rank(self, query, texts):
            return list(range(len(texts)))

    with pytest.raises(ConfigError, match="Ranker"):
        CachedScorer(Order())
    with pytest.raises(ConfigError, match="pure function"):
        CachedScorer(BM25Scorer())


def test_cache_inside_selective_scores_each_text_by_itself():
    cached = CachedScorer(FakeScorer())
    first = rerank("red apple", ["red apple", "banana", "apple"], Selective(cached, k=2))
    again = rerank("red apple", ["apple", "banana", "red apple"], Selective(cached, k=3))
    assert {s.text: s.score for s in again} == {"red apple": 1.0, "banana": 0.0, "apple": 0.5}
    assert first[0].text == "red apple"


class Tunable(BaseScorer):
    scale = ScoreScale.PROBABILITY
    name = "tunable"

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def fingerprint(self):
        return {"factor": self.factor}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [self.factor] * len(texts)


def test_cache_key_includes_settings_and_shares_one_store(tmp_path):
    path = tmp_path / "scores.sqlite"
    low, high = CachedScorer(Tunable(0.1), path=path), CachedScorer(Tunable(0.9), path=path)
    assert low.score("q", ["x"]) == [0.1]
    assert high.score("q", ["x"]) == [0.9]  # same name, same texts, other settings: no reuse
    assert CachedScorer(Tunable(0.1), path=path).score("q", ["x"]) == [0.1]


def test_cache_key_cannot_collide_through_separators():
    c = CachedScorer(FakeScorer())
    assert c.key("a\x00b", "c") != c.key("a", "b\x00c")
    assert c.key('a", "b', "c") != c.key("a", 'b", "c')


def test_locked_store_degrades_to_memory_with_one_warning(tmp_path, caplog):
    path = tmp_path / "scores.sqlite"
    c = CachedScorer(FakeScorer(), path=path, timeout=0.05)
    lock = sqlite3.connect(str(path), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING):
            assert c.score("red apple", ["red apple", "pear"]) == [1.0, 0.0]
            assert c.score("red apple", ["red apple", "pie"]) == [1.0, 0.0]
    finally:
        lock.execute("ROLLBACK")
    warnings = [r for r in caplog.records if "memory only" in r.getMessage()]
    assert len(warnings) == 1
    assert c.hits == 1  # the scores computed while the store failed were kept in memory


def test_unwritable_store_degrades_at_open(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        c = CachedScorer(FakeScorer(), path=tmp_path)  # a directory: sqlite cannot open it
    assert "memory only" in caplog.text
    assert c.score("red apple", ["apple"]) == [0.5]
    assert c.score("red apple", ["apple"]) == [0.5] and c.hits == 1


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: Threshold(s, absolute=0.5),
        lambda s: CachedScorer(s),
        lambda s: Cascade([Stage(s, keep=2, name="api"), Stage(FakeScorer())]),
        lambda s: Selective(s, k=2),
        lambda s: Hybrid([Signal(s, 0.5), Signal(FakeScorer(), 0.5)]),
    ],
    ids=["threshold", "cached", "cascade", "selective", "hybrid"],
)
def test_keep_order_falls_back_at_any_depth(wrap, caplog):
    cands = [Candidate(t, id=t) for t in ["banana", "red apple", "apple", "pear"]]
    with caplog.at_level(logging.WARNING):
        out = explain("red apple", cands, wrap(Down()))
    assert sorted(s.id for s in out.kept + out.dropped) == sorted(c.id for c in cands)
    assert out.kept, "a fallback keeps candidates"
    assert "on_error='keep_order'" in caplog.text
    with pytest.raises(BackendError):
        rerank("red apple", cands, wrap(Down(on_error="raise")))


def test_drops_are_marked_and_visible():
    ex = explain("q", TEXTS, Threshold(Table(CHEAP), absolute=0.5), top_n=2)
    assert ids(ex.kept) == ["a", "b"]
    reasons = {s.text: (s.details["dropped_by"], s.details["drop_reason"]) for s in ex.dropped}
    assert reasons["c"] == ("top_n", "beyond top_n=2")
    assert reasons["d"][0].startswith("Threshold(") and "< absolute 0.5" in reasons["d"][1]


def test_numpy_numbers_are_accepted_everywhere():
    s = Table(CHEAP)
    out = rerank("q", TEXTS, s, top_n=np.int64(2), threshold=np.float32(0.5))
    assert ids(out) == ["a", "b"]
    assert ids(rerank("q", TEXTS, Threshold(s, absolute=np.float64(0.75), min_keep=np.int32(1)))) == [
        "a",
        "b",
    ]
    assert ids(rerank("q", TEXTS, Selective(s, k=np.int64(2), rest="drop"))) == ["a", "b"]
    assert ids(rerank("q", TEXTS, Cascade([Stage(s, keep=np.int16(1))]))) == ["a"]
    assert (
        rerank("q", [Candidate("a", retrieval_score=np.float32(0.5))], s)[0].candidate.retrieval_score == 0.5
    )


def _scored() -> Scored:
    cascade = Cascade([Stage(Table(CHEAP, "cheap"), keep=3), Stage(Table(COSTLY, "costly"))])
    cands = [Candidate(t, id=t, metadata={"tags": ["x"], "n": {"k": 1}}) for t in TEXTS]
    return rerank("q", cands, cascade)[0]


def test_core_values_survive_pickle_deepcopy_and_processes():
    s = _scored()
    assert pickle.loads(pickle.dumps(s)) == s
    assert copy.deepcopy(s) == s
    assert copy.deepcopy(Candidate("x", metadata={"a": {"b": 1}})).metadata == {"a": {"b": 1}}
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        back = pool.submit(copy.deepcopy, s).result(timeout=120)
    assert back == s and back.details["stages"] == s.details["stages"]


def test_core_values_are_read_only():
    s = _scored()
    with pytest.raises(AttributeError):
        s.score = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.details["score"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        s.details["stages"]["cheap"] = 0.0  # nested details are read-only too
    with pytest.raises(TypeError):
        s.candidate.metadata["n"] = 2  # type: ignore[index]
    caller = {"n": 1}
    c = Candidate("x", metadata=caller)
    caller["n"] = 2
    assert c.metadata["n"] == 1  # the candidate holds its own copy


def test_hybrid_keeps_a_fallback_signal_exempt_from_thresholds():
    cands = [Candidate(t, id=t, retrieval_score=float(i)) for i, t in enumerate(TEXTS)]
    hybrid = Hybrid([Signal(Down(), 0.8, name="api"), Signal("retrieval", 0.2)])
    ex = explain("q", cands, hybrid, threshold=0.5)
    assert sorted(s.text for s in ex.kept) == sorted(TEXTS)  # nothing was reranked: nothing is cut
    assert not any(s.details["reranked"] for s in ex.kept)
    tail = rerank("q", TEXTS, Hybrid([Signal(Selective(Table(CHEAP), k=2), 1.0)]), threshold=0.99)
    assert [s.text for s in tail] == ["a", "c", "d", "e"]  # b (min-max 0.0) is cut; the unreranked tail stays


def test_detail_keys_that_shadow_arguments_are_kept():
    class Detailed(BaseScorer):
        scale, name = ScoreScale.PROBABILITY, "detailed"

        def score_details(self, query, texts):
            from rerankers_plugins.scorers.base import ScoreResult

            return ScoreResult(
                values=[0.5] * len(texts), per_item=[{"score": "raw", "details": 1}] * len(texts)
            )

    out = rerank("q", ["a"], Detailed())
    assert out[0].score == 0.5
    # a backend's detail named like one of ours is overridden by ours; every other detail is kept
    assert out[0].details["score"] == 0.5 and out[0].details["details"] == 1
    assert out[0].details["model"] == "detailed" and out[0].details["original_rank"] == 0


def test_non_finite_retrieval_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        Candidate("x", retrieval_score=float("nan"))


# -- explanations: a dropped candidate shows the numbers of the layer that dropped it -----------------


class Logit(BaseScorer):
    scale = ScoreScale.LOGIT

    def __init__(self, table: dict[str, float], name: str) -> None:
        self.table, self.name = table, name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [self.table[t] for t in texts]


def test_a_cascade_drop_shows_the_dropping_stage():
    cascade = Cascade(
        [
            Stage(
                Logit({t: v for t, v in zip(TEXTS, [4.0, 3.0, 2.0, 1.0, 0.0], strict=True)}, "cheap"), keep=3
            ),
            Stage(Table(COSTLY, "costly"), threshold=0.5),
        ]
    )
    ex = explain("q", TEXTS, cascade)
    assert ids(ex.kept) == ["c", "b"]
    drops = {s.text: s for s in ex.dropped}
    d = drops["d"].details  # cut by the first stage's keep: its score there, on its scale
    assert (drops["d"].score, d["reranked"], d["stage_reached"]) == (1.0, True, "cheap")
    assert d["stages"] == {"cheap": 1.0} and d["scale"] == "logit"
    assert d["dropped_by"] == "cascade stage 'cheap'" and d["drop_reason"] == "beyond keep=3"
    a = drops["a"].details  # cut by the second stage's threshold: the score the reason quotes
    assert (drops["a"].score, a["reranked"], a["stage_reached"]) == (0.2, True, "costly")
    assert a["stages"] == {"cheap": 4.0, "costly": 0.2} and a["scale"] == "probability"
    assert a["drop_reason"] == "score 0.2 < stage threshold 0.5"


def test_a_drop_inside_a_nested_cascade_names_the_inner_stage_reached():
    inner = Cascade([Stage(Table(CHEAP, "cheap"), keep=3), Stage(Table(COSTLY, "costly"), keep=2)])
    outer = Cascade([Stage(inner, name="inner"), Stage(FakeScorer(), name="last")])
    drops = {s.text: s.details for s in explain("q", TEXTS, outer).dropped}
    assert drops["a"]["dropped_by"] == "cascade stage 'costly'"
    assert drops["a"]["stage_reached"] == "costly"
    assert drops["a"]["stages"] == {"cheap": 0.9, "costly": 0.2, "inner": 0.2}
    assert drops["d"]["stage_reached"] == "cheap" and drops["d"]["stages"] == {"cheap": 0.1, "inner": 0.1}


def test_a_selective_tail_drop_is_unreranked_after_a_scoring_stage():
    cascade = Cascade(
        [Stage(Table(CHEAP, "cheap")), Stage(Selective(Table(COSTLY, "costly"), k=2, rest="drop"))]
    )
    drops = {s.text: s for s in explain("q", TEXTS, cascade).dropped}
    assert set(drops) == {"c", "e", "d"}
    for s in drops.values():  # the costly model never saw the tail
        assert s.details["dropped_by"].startswith("selective(") and not s.details["reranked"]
        stage = s.details["stage_reached"]
        assert s.details["stages"][stage] is None


class _HandBuilt(Strategy):
    """A third-party strategy that builds its Ranking by hand (no ``then``), breaking the contract
    the way ``how`` says."""

    name = "hand-built"
    scale = ScoreScale.LOGIT

    def __init__(self, how: str) -> None:
        self.how = how

    def run(self, query, ranking):
        entries = list(ranking.entries)
        if self.how == "lose":
            return Ranking(tuple(entries[1:]))
        if self.how == "twice":
            return Ranking((*entries, entries[0]))
        if self.how == "foreign":
            return Ranking((*entries[1:], Entry(Candidate("stranger"), entries[0].position)))
        return Ranking(tuple(entries[1:]), (entries[0],))  # dropped, but by nobody


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("lose", r"'hand-built' lost candidates: positions \[0\] neither kept nor dropped"),
        ("twice", "'hand-built' returned position 0 twice"),
        ("foreign", "'hand-built' returned a candidate it was not given"),
        ("unmarked", r"'hand-built' passed on dropped entries without saying who dropped them: \[0\]"),
    ],
)
def test_a_strategy_that_breaks_the_ranking_contract_is_named(how, message):
    with pytest.raises(BackendError, match=message):
        rerank("q", ["a", "b", "c"], _HandBuilt(how))


def test_a_cascade_nested_in_a_stage_with_the_same_stage_names_reports_the_inner_stage():
    # found by the random nestings in CI: an inner cascade whose stages share the outer's names
    # ('a', 'b'); an entry its stage 'a' cut was reported as having reached the outer stage 'b'
    inner = Cascade(
        [Stage(Table({"x": 0.9, "y": 0.2, "z": 0.5}), keep=1, name="a"), Stage(FakeScorer(), name="b")]
    )
    outer = Cascade(
        [Stage(Table({"x": 0.9, "y": 0.2, "z": 0.5}, name="t2"), keep=2, name="a"), Stage(inner, name="b")]
    )
    ex = explain("q", ["x", "y", "z"], outer)
    by_text = {s.text: s.details for s in ex.dropped}
    assert (
        by_text["y"]["dropped_by"] == "cascade stage 'a'" and by_text["y"]["stage_reached"] == "a"
    )  # the outer a
    assert (
        by_text["z"]["dropped_by"] == "cascade stage 'a'" and by_text["z"]["stage_reached"] == "a"
    )  # the inner a
    assert set(by_text["z"]["stages"]) == {"a", "b"}  # it reached the outer b, and was cut by the inner a
