"""rerank(): the one place that sorts and cuts. Exercised with small scorers written here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    Candidate,
    ConfigError,
    FakeScorer,
    ScoreScale,
    arerank,
    rerank,
)


class FixedScorer(BaseScorer):
    """Returns the scores it was given, in order; counts calls."""

    def __init__(self, scores: Sequence[float], scale: ScoreScale = ScoreScale.PROBABILITY) -> None:
        self.scores = list(scores)
        self.scale = scale
        self.name = "fixed"
        self.calls = 0

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return self.scores[: len(texts)]


class ListRanker:
    """A listwise ranker: returns a fixed permutation."""

    name = "list-ranker"

    def __init__(self, perm: list[int]) -> None:
        self.perm = perm

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return list(self.perm)


def texts(result):
    return [s.text for s in result]


def test_sorts_best_first_and_records_details():
    cands = [Candidate("a", id="A"), Candidate("b", id="B"), Candidate("c", id="C")]
    out = rerank("q", cands, FixedScorer([0.2, 0.9, 0.5]))
    assert texts(out) == ["b", "c", "a"]
    assert [s.rank for s in out] == [0, 1, 2]
    assert [s.details["original_rank"] for s in out] == [1, 2, 0]
    assert out[0].details["model"] == "fixed"
    assert out[0].details["scale"] == "probability"
    assert out[0].details["score"] == out[0].score == 0.9
    assert out[0].candidate is cands[1]


def test_ties_keep_input_order_and_duplicates_are_kept():
    out = rerank("q", ["x", "dup", "dup", "y"], FixedScorer([0.5, 0.7, 0.7, 0.5]))
    assert texts(out) == ["dup", "dup", "x", "y"]
    assert [s.id for s in out] == ["1", "2", "0", "3"]


def test_top_n_and_threshold():
    scorer = FixedScorer([0.1, 0.8, 0.4, 0.6])
    assert texts(rerank("q", list("abcd"), scorer, top_n=2)) == ["b", "d"]
    assert texts(rerank("q", list("abcd"), scorer, threshold=0.4)) == ["b", "d", "c"]
    assert texts(rerank("q", list("abcd"), scorer, threshold=0.4, top_n=1)) == ["b"]
    assert texts(rerank("q", list("abcd"), scorer, top_n=10)) == ["b", "d", "c", "a"]


def test_threshold_can_return_nothing_but_never_drops_otherwise():
    assert rerank("q", list("abc"), FixedScorer([0.1, 0.2, 0.3]), threshold=0.9) == []
    out = rerank("q", [f"t{i}" for i in range(50)], FixedScorer([i % 7 / 7 for i in range(50)]))
    assert sorted(s.text for s in out) == sorted(f"t{i}" for i in range(50))


def test_empty_list_returns_empty_without_model_call():
    scorer = FakeScorer()
    assert rerank("q", [], scorer) == []
    assert scorer.calls == 0


@pytest.mark.parametrize("top_n", [0, -1, 1.5, True])
def test_bad_top_n(top_n):
    with pytest.raises(ConfigError, match="top_n"):
        rerank("q", ["a"], FakeScorer(), top_n=top_n)


@pytest.mark.parametrize(
    ("scale", "threshold", "match"),
    [
        (ScoreScale.PROBABILITY, math.nan, "NaN"),
        (ScoreScale.PROBABILITY, 1.5, "outside the probability scale"),
        (ScoreScale.PROBABILITY, -0.1, "outside"),
        (ScoreScale.SIMILARITY, -1.5, "outside the similarity scale"),
        (ScoreScale.RELEVANCE, 2.0, "outside"),
        (ScoreScale.LOGIT, math.inf, "outside"),
        (ScoreScale.RANK_ONLY, 0.5, "RANK_ONLY"),
    ],
)
def test_threshold_checked_against_scale(scale, threshold, match):
    with pytest.raises(ConfigError, match=match):
        rerank("q", ["a"], FixedScorer([0.5], scale=scale), threshold=threshold)


def test_threshold_allowed_on_each_scale():
    assert texts(rerank("q", ["a", "b"], FixedScorer([-3.0, 4.0], ScoreScale.LOGIT), threshold=0.0)) == ["b"]
    assert texts(
        rerank("q", ["a", "b"], FixedScorer([-0.5, 0.3], ScoreScale.SIMILARITY), threshold=-0.6)
    ) == [
        "b",
        "a",
    ]


def test_empty_query_refused():
    with pytest.raises(ConfigError, match="query is empty"):
        rerank("   ", ["a"], FakeScorer())
    with pytest.raises(TypeError, match="query must be a str"):
        rerank(None, ["a"], FakeScorer())  # type: ignore[arg-type]


def test_non_str_text_raises_type_error_naming_the_candidate():
    with pytest.raises(TypeError, match="candidate 1 must be a Candidate or a str, got NoneType"):
        rerank("q", ["a", None], FakeScorer())  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"Candidate\.text must be a str, got int"):
        Candidate(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a single string"):
        rerank("q", "abc", FakeScorer())


def test_empty_texts_scored_unless_skipped(caplog):
    scorer = FixedScorer([0.9, 0.1, 0.5])
    out = rerank("q", ["", "a", "  "], scorer)
    assert texts(out) == ["", "  ", "a"]
    with caplog.at_level("INFO"):
        out = rerank("q", ["", "a", "  "], FakeScorer(), skip_empty=True)
    assert texts(out) == ["a"]
    assert out[0].details["original_rank"] == 1
    assert "2 empty candidate(s)" in caplog.text


def test_unicode_and_emoji_pass_through():
    cands = ["naïve café 🍰 résumé", "日本語のテキスト", "plain"]
    out = rerank("café 🍰", cands, FakeScorer())
    assert texts(out)[0] == "naïve café 🍰 résumé"
    assert sorted(texts(out)) == sorted(cands)


def test_mismatched_score_length_is_backend_error():
    class Short(FixedScorer):
        def score(self, query, texts):
            return [0.5]

    with pytest.raises(BackendError, match=r"'fixed' returned 1 scores for 3 texts"):
        rerank("q", list("abc"), Short([]))


def test_nan_score_is_backend_error_naming_scorer():
    with pytest.raises(BackendError, match=r"'fixed' returned non-finite scores .* positions \[1\]"):
        rerank("q", list("ab"), FixedScorer([0.5, math.nan]))


def test_inputs_never_mutated():
    meta = {"source": "wiki", "tags": ["x"]}
    cands = [Candidate("a", id="1", metadata=meta), Candidate("b", id="2")]
    before = list(cands)
    rerank("q", cands, FixedScorer([0.1, 0.9]))
    assert cands == before
    assert meta == {"source": "wiki", "tags": ["x"]}
    with pytest.raises(TypeError):
        cands[0].metadata["new"] = 1  # type: ignore[index]


def test_ranker_permutation_and_bad_permutation():
    out = rerank("q", list("abc"), ListRanker([2, 0, 1]))
    assert texts(out) == ["c", "a", "b"]
    assert out[0].details["scale"] == "rank_only"
    with pytest.raises(ConfigError, match="RANK_ONLY"):
        rerank("q", list("abc"), ListRanker([2, 0, 1]), threshold=0.5)
    with pytest.raises(BackendError, match="not a permutation"):
        rerank("q", list("abc"), ListRanker([0, 0, 1]))


async def test_arerank_matches_rerank_and_uses_ascore():
    class AsyncOnly(FixedScorer):
        def score(self, query, texts):
            raise AssertionError("the sync path must not be used")

        async def ascore(self, query, texts):
            return [0.3, 0.7, 0.1][: len(texts)]

    out = await arerank("q", list("abc"), AsyncOnly([]), top_n=2)
    assert texts(out) == ["b", "a"]
    sync = rerank("red apple", ["banana", "red apple", "apple"], FakeScorer())
    asy = await arerank("red apple", ["banana", "red apple", "apple"], FakeScorer())
    assert [(s.text, s.score) for s in sync] == [(s.text, s.score) for s in asy]


async def test_arerank_runs_plain_sync_scorer_off_loop():
    import threading

    seen = {}

    class Plain:
        name = "plain"
        scale = ScoreScale.LOGIT

        def score(self, query, texts):
            seen["thread"] = threading.current_thread()
            return [float(len(t)) for t in texts]

    out = await arerank("q", ["aa", "a", "aaa"], Plain())
    assert texts(out) == ["aaa", "aa", "a"]
    assert seen["thread"] is not threading.main_thread()
