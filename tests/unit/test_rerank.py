"""rerank(): the one place that sorts and cuts. Exercised with small scorers written here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from deps import dev

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    Candidate,
    Cascade,
    ConfigError,
    FakeScorer,
    ScoreScale,
    Selective,
    Stage,
    Threshold,
    arerank,
    rerank,
)
from rerankers_plugins.scorers.base import ScoreResult


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


# -- malformed backend answers: a BackendError naming the backend, which keep_order handles ---------


def _gen(values):
    return lambda: (v for v in values)


BAD_SCORES = {
    "none": lambda: None,
    "scalar": lambda: 0.5,
    "bool": lambda: True,
    "string": lambda: "0.5 0.7 0.1",
    "bytes": lambda: b"\x00\x01\x01",
    "mapping": lambda: {"a": 0.5, "b": 0.7, "c": 0.1},
    "set": lambda: {0.5, 0.7, 0.1},
    "short-list": lambda: [0.5, 0.7],
    "long-list": lambda: [0.5, 0.7, 0.1, 0.2],
    "short-generator": _gen([0.5, 0.7]),
    "long-iterator": lambda: iter([0.5, 0.7, 0.1, 0.2]),
    "bools": lambda: [True, False, True],
    "numeric-strings": lambda: ["0.5", "0.7", "0.1"],
    "none-inside": lambda: [0.5, None, 0.1],
    "nan": lambda: [0.5, math.nan, 0.1],
    "huge-int": lambda: [10**400, 0, 1],
    "numpy-scalar": lambda: np.float64(0.5),
    "numpy-0d": lambda: np.array(0.5),
    "numpy-2d": lambda: np.array([[0.5], [0.7], [0.1]]),
    "numpy-short": lambda: np.array([0.5, 0.7]),
    "numpy-bools": lambda: np.array([True, False, True]),
}

BAD_ORDERS = {
    "none": lambda: None,
    "scalar": lambda: 0,
    "string": lambda: "021",
    "bytes": lambda: b"\x02\x00\x01",
    "mapping": lambda: {2: "c", 0: "a", 1: "b"},
    "set": lambda: {0, 1, 2},
    "repeat": lambda: [0, 0, 1],
    "short": lambda: [2, 0],
    "out-of-range": lambda: [0, 1, 3],
    "floats": lambda: [2.0, 0.0, 1.0],
    "bools": lambda: [True, False, 2],
    "short-generator": _gen([1, 0]),
    "numpy-0d": lambda: np.array(1),
    "numpy-repeat": lambda: np.array([1, 1, 0]),
}


class Odd(BaseScorer):
    """A scorer answering whatever ``answer()`` gives, sync and async."""

    scale = ScoreScale.PROBABILITY
    name = "odd-model"

    def __init__(self, answer, on_error: str = "raise") -> None:
        self.answer, self.on_error = answer, on_error

    def score(self, query, texts):
        return self.answer()

    async def ascore(self, query, texts):
        return self.answer()


class OddRanker:
    name = "odd-ranker"

    def __init__(self, answer, on_error: str = "raise") -> None:
        self.answer, self.on_error = answer, on_error

    def rank(self, query, texts):
        return self.answer()

    async def arank(self, query, texts):
        return self.answer()


def _fell_back(out) -> None:
    assert texts(out) == ["a", "b", "c"]  # the input order, unscored and marked
    assert all(s.details["fallback"] == "keep_order" and not s.details["reranked"] for s in out)


@pytest.mark.parametrize("answer", BAD_SCORES.values(), ids=BAD_SCORES.keys())
async def test_a_malformed_score_list_is_a_backend_error_naming_the_scorer(answer):
    with pytest.raises(BackendError, match="'odd-model'"):
        rerank("q", list("abc"), Odd(answer))
    with pytest.raises(BackendError, match="'odd-model'"):
        await arerank("q", list("abc"), Odd(answer))
    _fell_back(rerank("q", list("abc"), Odd(answer, on_error="keep_order")))
    _fell_back(await arerank("q", list("abc"), Odd(answer, on_error="keep_order")))


@pytest.mark.parametrize("answer", BAD_ORDERS.values(), ids=BAD_ORDERS.keys())
async def test_a_malformed_permutation_is_a_backend_error_naming_the_ranker(answer):
    with pytest.raises(BackendError, match="'odd-ranker'"):
        rerank("q", list("abc"), OddRanker(answer))
    with pytest.raises(BackendError, match="'odd-ranker'"):
        await arerank("q", list("abc"), OddRanker(answer))
    _fell_back(rerank("q", list("abc"), OddRanker(answer, on_error="keep_order")))
    _fell_back(await arerank("q", list("abc"), OddRanker(answer, on_error="keep_order")))


class OddDetails(BaseScorer):
    """A scorer whose ``score_details`` / ``ascore_details`` answer ``answer()``."""

    scale = ScoreScale.PROBABILITY
    name = "odd-details"

    def __init__(self, answer, on_error: str = "raise") -> None:
        self.answer, self.on_error = answer, on_error

    def score_details(self, query, texts):
        return self.answer()

    async def ascore_details(self, query, texts):
        return self.answer()


BAD_RESULTS = {
    "none": lambda: None,
    "plain-list": lambda: [0.5, 0.7, 0.1],
    "values-none": lambda: ScoreResult(values=None),  # type: ignore[arg-type]
    "info-not-a-mapping": lambda: ScoreResult(values=[0.5, 0.7, 0.1], info=["calls"]),  # type: ignore[arg-type]
    "per-item-short": lambda: ScoreResult(values=[0.5, 0.7, 0.1], per_item=[{}]),
    "per-item-not-mappings": lambda: ScoreResult(values=[0.5, 0.7, 0.1], per_item=[1, 2, 3]),  # type: ignore[list-item]
    "per-item-a-number": lambda: ScoreResult(values=[0.5, 0.7, 0.1], per_item=3),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("answer", BAD_RESULTS.values(), ids=BAD_RESULTS.keys())
async def test_a_malformed_score_result_is_a_backend_error_naming_the_scorer(answer):
    with pytest.raises(BackendError, match="'odd-details'"):
        rerank("q", list("abc"), OddDetails(answer))
    with pytest.raises(BackendError, match="'odd-details'"):
        await arerank("q", list("abc"), OddDetails(answer))
    _fell_back(rerank("q", list("abc"), OddDetails(answer, on_error="keep_order")))
    _fell_back(await arerank("q", list("abc"), OddDetails(answer, on_error="keep_order")))


async def test_an_async_method_that_returns_no_awaitable_is_a_backend_error():
    class NotAsync(Odd):
        def ascore(self, query, texts):  # type: ignore[override]
            return [0.5, 0.7, 0.1]

    with pytest.raises(BackendError, match="'odd-model' returned list from an async method"):
        await arerank("q", list("abc"), NotAsync(lambda: None))
    _fell_back(await arerank("q", list("abc"), NotAsync(lambda: None, on_error="keep_order")))


async def test_a_malformed_answer_inside_a_strategy_falls_back_there():
    for strategy in (
        Cascade([Stage(Odd(lambda: None, on_error="keep_order"), name="odd"), Stage(FakeScorer())]),
        Threshold(Odd(lambda: "x", on_error="keep_order"), absolute=0.5),
        Selective(OddRanker(lambda: None, on_error="keep_order"), k=2),
    ):
        assert sorted(texts(rerank("q", list("abc"), strategy))) == ["a", "b", "c"]
        assert sorted(texts(await arerank("q", list("abc"), strategy))) == ["a", "b", "c"]


GOOD_SCORES = {
    "tuple": lambda: (0.5, 0.7, 0.1),
    "generator": _gen([0.5, 0.7, 0.1]),
    "numpy-float32": lambda: np.array([0.5, 0.7, 0.1], dtype=np.float32),
    "numpy-scalars": lambda: [np.float64(0.5), np.float32(0.7), np.float16(0.1)],
    "ints": lambda: [0, 1, 0],
}


@pytest.mark.parametrize("answer", GOOD_SCORES.values(), ids=GOOD_SCORES.keys())
async def test_sequences_of_numbers_of_the_right_length_are_scores(answer):
    got = rerank("q", list("abc"), Odd(answer))
    assert texts(got) == texts(await arerank("q", list("abc"), Odd(answer))) == ["b", "a", "c"]
    assert all(type(s.score) is float for s in got)


async def test_torch_tensors_and_numpy_permutations_are_accepted():
    torch = dev("torch")
    out = rerank("q", list("abc"), Odd(lambda: torch.tensor([0.5, 0.7, 0.1])))
    assert texts(out) == ["b", "a", "c"] and out[0].score == pytest.approx(0.7)
    out = await arerank("q", list("abc"), Odd(lambda: torch.tensor([0.5, 0.7, 0.1], dtype=torch.bfloat16)))
    assert texts(out) == ["b", "a", "c"]
    assert texts(rerank("q", list("abc"), OddRanker(lambda: np.array([2, 0, 1])))) == ["c", "a", "b"]
    assert texts(rerank("q", list("abc"), OddRanker(lambda: torch.tensor([2, 0, 1])))) == ["c", "a", "b"]
    with pytest.raises(BackendError, match="'odd-model' returned a single Tensor"):
        rerank("q", list("abc"), Odd(lambda: torch.tensor(0.5)))
