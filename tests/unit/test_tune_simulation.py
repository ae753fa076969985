"""``tune`` replays each configuration from cached scores: the replayed ranking must be exactly the
ranking its rebuilt pipeline returns when run for real on the same candidates, for every kind in
the search space (single, fusion weighted and RRF, cascade, gate) and every kind of leaf (a pure
scorer, BM25 whose scores depend on the list, a ranker whose order depends on the list).

Candidates are generated with duplicate texts, tied scores, tied or missing retrieval scores and
lists shorter than the depth."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankers_plugins import BM25Scorer, Candidate, FakeScorer, as_strategy, rerank
from rerankers_plugins.eval.tune.space import (
    Cascaded,
    Fused,
    Gated,
    QueryData,
    ScoreTable,
    Single,
    build_space,
)
from rerankers_plugins.spec import build_pipeline, inline, load_pipeline

WORDS = ["red", "apple", "bank", "river", "rate", "fruit", "tree", "money", "the", "a"]
DEPTHS = (2, 3, 5, 8)


class ParityRanker:
    """A listwise stand-in whose order depends on the list it is given: the reverse of its input
    when the list has an odd length, the input order otherwise."""

    name = "parity"

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        n = len(texts)
        return list(range(n))[::-1] if n % 2 else list(range(n))


def _leaves():
    return {
        "fake": as_strategy(FakeScorer()),
        "bm25": as_strategy(BM25Scorer()),
        "parity": as_strategy(ParityRanker()),
    }


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
retrieval = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 4.5])


@st.composite
def query_sets(draw: st.DrawFn, mixed: bool = False) -> list[QueryData]:
    out = []
    for qi in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 12))
        docs = draw(st.lists(texts, min_size=n, max_size=n))
        mode = draw(st.sampled_from(["scores", "none"] + (["mixed"] if mixed else [])))
        scores: list[float | None]
        if mode == "scores":
            scores = sorted(draw(st.lists(retrieval, min_size=n, max_size=n)), reverse=True)
        elif mode == "none":
            scores = [None] * n
        else:
            scores = [draw(st.one_of(st.none(), retrieval)) for _ in range(n)]
        candidates = tuple(
            Candidate(t, f"d{i}", retrieval_score=s)
            for i, (t, s) in enumerate(zip(docs, scores, strict=True))
        )
        judged = {f"d{i}": draw(st.integers(0, 2)) for i in range(n) if draw(st.booleans())}
        query = draw(texts)
        out.append(QueryData(f"q{qi}", query, candidates, judged))
    return out


def _check(queries: list[QueryData]) -> set[str]:
    leaves = _leaves()
    space = build_space(leaves, DEPTHS, queries, {"fake": 1.0, "parity": 2.0, "bm25": 3.0})
    table = ScoreTable(leaves)
    kinds = set()
    for config in space:
        pipeline = build_pipeline(config.spec(), leaves)
        for q in queries:
            order, calls = config.rank(q, table)
            simulated = [q.candidates[i].id for i in order]
            executed = [s.id for s in rerank(q.text, list(q.candidates), pipeline)] if q.candidates else []
            assert simulated == executed, (config.name, q)
            assert all(name in config.scorers for name, _ in calls)
        kinds.add(config.kind)
    return kinds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query_sets())
def test_every_configuration_ranks_as_its_pipeline_runs(queries):
    kinds = _check(queries)
    assert {"single", "cascade"} <= kinds


def test_every_kind_is_searched_and_replays_exactly():
    queries = [
        QueryData(
            "q1",
            "red apple fruit",
            tuple(
                Candidate(t, f"d{i}", retrieval_score=s)
                for i, (t, s) in enumerate(
                    [
                        ("red apple", 9.0),
                        ("apple tree fruit", 7.5),
                        ("red apple", 7.5),  # a duplicate text, a tied retrieval score
                        ("bank rate", 3.0),
                        ("river bank", 2.0),
                        ("the fruit", 2.0),
                        ("money tree", 1.0),
                    ]
                )
            ),
            {"d0": 2, "d1": 1},
        ),
        QueryData("q2", "bank money", (Candidate("bank money rate", "e0", retrieval_score=2.0),), {"e0": 1}),
        QueryData("q3", "river", (), {}),
    ]
    kinds = _check(queries)
    assert kinds == {"single", "fusion", "cascade", "gate"}
    space = build_space(_leaves(), DEPTHS, queries, {"fake": 1.0, "parity": 2.0, "bm25": 3.0})
    assert any(isinstance(c, Fused) and c.weights is None for c in space)  # RRF
    assert not any(
        isinstance(c, Fused) and c.weights and c.scorer == "parity" for c in space
    )  # a ranker has no scores to weigh
    assert any(isinstance(c, Gated) for c in space)
    assert {(c.first, c.second) for c in space if isinstance(c, Cascaded)} == {
        ("fake", "parity"),
        ("fake", "bm25"),
        ("parity", "bm25"),
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query_sets(mixed=True))
def test_lists_with_some_retrieval_scores_missing_are_never_fused_or_gated(queries):
    space = build_space(_leaves(), DEPTHS, queries, {"fake": 1.0, "parity": 2.0, "bm25": 3.0})
    mixed = any(
        any(c.retrieval_score is None for c in q.candidates)
        and any(c.retrieval_score is not None for c in q.candidates)
        for q in queries
    )
    if mixed:
        assert not any(isinstance(c, Fused | Gated) for c in space)
    _check(queries)


def test_a_model_scorer_replays_exactly(tiny_bi):
    """A real (tiny) bi-encoder, scored once over the whole list, read back for each sublist."""
    leaves = {"bi": as_strategy(tiny_bi), "bm25": as_strategy(BM25Scorer())}
    words = ["apple", "bank", "river", "red fruit", "interest rate", "tree", "money"]
    candidates = tuple(
        Candidate(f"{words[i % 7]} {words[(3 * i) % 7]} {i % 4}", f"d{i}", retrieval_score=float(30 - i))
        for i in range(24)
    )
    queries = [QueryData("q", "red apple at the bank", candidates, {"d1": 1, "d5": 2})]
    table = ScoreTable(leaves)
    for config in build_space(leaves, (5, 10, 20), queries, {"bi": 2.0, "bm25": 1.0}):
        order, _ = config.rank(queries[0], table)
        pipeline = build_pipeline(config.spec(), leaves)
        assert [candidates[i].id for i in order] == [
            s.id for s in rerank(queries[0].text, list(candidates), pipeline)
        ], config.name


def test_the_written_spec_is_the_pipeline_that_was_replayed():
    """A configuration's spec with its scorers written out (what pipeline.toml holds) rebuilds,
    through the spec loader, a pipeline that ranks as the replay does."""
    leaves = {"fake": as_strategy(FakeScorer()), "bm25": as_strategy(BM25Scorer())}
    specs = {"fake": {"scorer": "fake"}, "bm25": {"scorer": "bm25"}}
    candidates = tuple(
        Candidate(f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]}", f"d{i}", retrieval_score=10.0 - i)
        for i in range(15)
    )
    q = QueryData("q", "red apple bank", candidates, {"d0": 1})
    table = ScoreTable(leaves)
    for config in [
        Single(10, "fake"),
        Fused.of(leaves["fake"], "fake", 10, (0.7, 0.3)),
        Cascaded(10, "bm25", "fake", 5),
    ]:
        order, _ = config.rank(q, table)
        rebuilt = load_pipeline(inline(config.spec(), specs))
        assert [s.id for s in rerank(q.text, list(candidates), rebuilt)] == [candidates[i].id for i in order]
