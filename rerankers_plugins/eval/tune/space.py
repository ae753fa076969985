"""What ``tune`` searches: configurations of candidate scorers, each replayed from cached scores
exactly as its pipeline ranks.

A configuration is a spec (:mod:`rerankers_plugins.spec`) over named leaf scorers, always outermost a
``selective`` head of ``k = depth`` with ``rest = "drop"`` (the pipeline reranks the first ``depth``
first-stage candidates, whatever the retriever hands it):

========== ============================================================== =======================
kind       inside the depth head                                          name
========== ============================================================== =======================
single     one scorer                                                     ``maxsim@30``
fusion     Hybrid of the scorer and the retrieval score (min-max weights, ``maxsim@30+retrieval:0.3``
           or RRF)                                                        ``maxsim@30+rrf``
cascade    a cheaper scorer ranks the head, keeps ``m``, a costlier one   ``bm25@100>maxsim@30``
           reranks them
gate       Selective's gate: the first stage is kept as it is where its   ``maxsim@30?margin>=1.2``
           top-1 retrieval margin is at least a threshold
========== ============================================================== =======================

:meth:`Config.rank` replays a configuration on one query from a :class:`ScoreTable`, calling the
same pieces the strategies call (:func:`~rerankers_plugins.ops.fusion.best_first`,
:meth:`Hybrid.fuse_values`, :func:`retrieval_values`, :meth:`Selective.gate`); the test suite runs
every kind's rebuilt pipeline on the same candidates and finds the same ranking.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rerankers_plugins.errors import BackendError
from rerankers_plugins.eval.metrics import score_query
from rerankers_plugins.ops.fusion import best_first
from rerankers_plugins.pipeline.hybrid import Hybrid, Signal, retrieval_values
from rerankers_plugins.pipeline.leaves import ScorerLeaf
from rerankers_plugins.pipeline.ranking import Ranking, Strategy
from rerankers_plugins.pipeline.selective import Selective
from rerankers_plugins.spec import Spec
from rerankers_plugins.types import Candidate, ScoreScale

__all__ = ["Call", "Cascaded", "Config", "Fused", "Gated", "QueryData", "ScoreTable", "Single", "ndcg10"]

#: the retrieval signal's name in fused configurations (a scorer may not take it)
RETRIEVAL = "retrieval"


@dataclass(frozen=True)
class QueryData:
    """One query: its text, its first-stage candidates (best first) and its judgments."""

    qid: str
    text: str
    candidates: tuple[Candidate, ...]
    judged: Mapping[str, int]
    #: whitespace-separated words of each candidate's text (the cost model's length feature)
    words: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(len(c.text.split()) for c in self.candidates))


#: one leaf call a configuration makes for a query: (scorer name, first-stage positions it scores)
Call = tuple[str, tuple[int, ...]]


def leaf_values(leaf: Strategy, query: str, candidates: Sequence[Candidate]) -> list[float]:
    """The scores ``leaf`` gives ``candidates`` in its pipeline (checked, on its scale; a ranker's
    ``n - position``), in input order. A leaf that fell back (``on_error="keep_order"``) is an error
    here: a fallback's order is no score to replay."""
    out = leaf.run(query, Ranking.start(candidates))
    if out.info.get("fallback") or len(out.entries) != len(candidates):
        raise BackendError(f"scorer {leaf.name!r} failed while tuning scored its candidates")
    by_position = {e.position: e.score for e in out.entries}
    return [by_position[i] for i in range(len(candidates))]


class ScoreTable:
    """Every candidate scorer's scores. A pure leaf (a function of query and text) is scored once
    per query over all its candidates (:meth:`fill`) and read by position; any other (BM25 over the
    list, a listwise ranker) is called once per distinct list it is given, on demand.
    ``on_call(name, seconds, n)`` hears of each on-demand call (the cost model's samples)."""

    def __init__(
        self,
        leaves: Mapping[str, Strategy],
        on_call: Callable[[str, float, QueryData, tuple[int, ...]], None] | None = None,
    ) -> None:
        self.leaves = dict(leaves)
        self._full: dict[tuple[str, str], list[float]] = {}
        self._lists: dict[tuple[str, str, tuple[int, ...]], list[float]] = {}
        self._on_call = on_call

    def pure(self, name: str) -> bool:
        """Whether ``name`` scores a candidate the same whatever list it is in: a scorer that
        declares itself pure (a ranker's ``n - position`` never is)."""
        leaf = self.leaves[name]
        return isinstance(leaf, ScorerLeaf) and leaf.pure

    def fill(self, name: str, q: QueryData) -> None:
        """Score all of ``q``'s candidates with the pure leaf ``name`` (once)."""
        if (name, q.qid) not in self._full:
            self._full[name, q.qid] = leaf_values(self.leaves[name], q.text, q.candidates)

    def full(self, name: str, q: QueryData) -> list[float]:
        return self._full[name, q.qid]

    def values(self, name: str, q: QueryData, positions: Sequence[int]) -> list[float]:
        """``name``'s scores of the candidates at ``positions``, as its pipeline would score that list."""
        if self.pure(name):
            full = self._full.get((name, q.qid))
            if full is None:
                self.fill(name, q)
                full = self._full[name, q.qid]
            return [full[i] for i in positions]
        key = (name, q.qid, tuple(positions))
        if key not in self._lists:
            t0 = time.perf_counter()
            self._lists[key] = leaf_values(self.leaves[name], q.text, [q.candidates[i] for i in positions])
            if self._on_call is not None:
                self._on_call(name, time.perf_counter() - t0, q, key[2])
        return self._lists[key]


def ndcg10(q: QueryData, order: Sequence[int]) -> float:
    """NDCG@10 of the candidates of ``q`` in ``order`` (positions)."""
    return score_query("ndcg@10", q.judged, [str(q.candidates[i].id) for i in order])


def _ranked(positions: Sequence[int], values: Sequence[float]) -> list[int]:
    return [positions[k] for k in best_first(values)]


@dataclass(frozen=True)
class Config(ABC):
    """One configuration: its leaf scorers by name, and the depth it reranks."""

    kind: ClassVar[str]
    depth: int

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def scorers(self) -> tuple[str, ...]: ...

    @abstractmethod
    def inner_spec(self) -> Spec | str:
        """The pipeline inside the depth head (scorers named, as a spec file's ``use``)."""

    def spec(self) -> Spec:
        """The pipeline spec, scorers by name (:func:`rerankers_plugins.spec.inline` writes them out)."""
        return {"selective": self.inner_spec(), "k": self.depth, "rest": "drop"}

    def head(self, q: QueryData) -> tuple[int, ...]:
        return tuple(range(min(self.depth, len(q.candidates))))

    @abstractmethod
    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        """The positions of ``q``'s candidates as the pipeline returns them, and its leaf calls."""


@dataclass(frozen=True)
class FirstStageOnly(Config):
    """The first stage's order, nothing reranked: the baseline every configuration is tested against."""

    kind: ClassVar[str] = "first-stage"

    @property
    def name(self) -> str:
        return "first stage"

    @property
    def scorers(self) -> tuple[str, ...]:
        return ()

    def inner_spec(self) -> Spec | str:
        raise NotImplementedError("the first stage alone has no pipeline")

    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        return list(range(len(q.candidates))), []


@dataclass(frozen=True)
class Single(Config):
    kind: ClassVar[str] = "single"
    scorer: str = ""

    @property
    def name(self) -> str:
        return f"{self.scorer}@{self.depth}"

    @property
    def scorers(self) -> tuple[str, ...]:
        return (self.scorer,)

    def inner_spec(self) -> Spec | str:
        return self.scorer

    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        head = self.head(q)
        return _ranked(head, table.values(self.scorer, q, head)), [(self.scorer, head)]


@dataclass(frozen=True)
class Fused(Config):
    """The scorer and the retrieval score fused by a :class:`Hybrid`: min-max weights
    ``(scorer, retrieval)``, or RRF with equal weights (``weights=None``)."""

    kind: ClassVar[str] = "fusion"
    scorer: str = ""
    weights: tuple[float, float] | None = None
    hybrid: Hybrid = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    @classmethod
    def of(cls, leaf: Strategy, name: str, depth: int, weights: tuple[float, float] | None) -> Fused:
        signals = [
            Signal(leaf, weights[0] if weights else 1.0, name=name),
            Signal("retrieval", weights[1] if weights else 1.0, name=RETRIEVAL),
        ]
        hybrid = Hybrid(signals, method="weighted" if weights else "rrf")
        return cls(depth, name, weights, hybrid)

    @property
    def name(self) -> str:
        suffix = f"{RETRIEVAL}:{self.weights[1]:g}" if self.weights else "rrf"
        return f"{self.scorer}@{self.depth}+{suffix}"

    @property
    def scorers(self) -> tuple[str, ...]:
        return (self.scorer,)

    def inner_spec(self) -> Spec | str:
        w = self.weights or (1.0, 1.0)
        return {
            "hybrid": [
                {"signal": self.scorer, "weight": w[0], "name": self.scorer},
                {"signal": RETRIEVAL, "weight": w[1], "name": RETRIEVAL},
            ],
            "method": "weighted" if self.weights else "rrf",
        }

    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        head = self.head(q)
        model = table.values(self.scorer, q, head)
        retrieval = retrieval_values([q.candidates[i] for i in head], head)
        fused, _ = self.hybrid.fuse_values([list(model), list(retrieval)])
        return _ranked(head, fused), [(self.scorer, head)]


@dataclass(frozen=True)
class Cascaded(Config):
    """``first`` ranks the depth head and keeps ``keep``; ``second`` reranks those."""

    kind: ClassVar[str] = "cascade"
    first: str = ""
    second: str = ""
    keep: int = 0

    @property
    def name(self) -> str:
        return f"{self.first}@{self.depth}>{self.second}@{self.keep}"

    @property
    def scorers(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def inner_spec(self) -> Spec | str:
        return {
            "cascade": [
                {"stage": self.first, "keep": self.keep, "name": self.first},
                {"stage": self.second, "name": self.second},
            ]
        }

    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        head = self.head(q)
        survivors = tuple(_ranked(head, table.values(self.first, q, head))[: self.keep])
        order = _ranked(survivors, table.values(self.second, q, survivors))
        return order, [(self.first, head), (self.second, survivors)]


@dataclass(frozen=True)
class Gated(Config):
    """Selective's gate on the depth head: where the first stage's top-1 retrieval margin is at
    least ``margin``, its order is kept and nothing is scored."""

    kind: ClassVar[str] = "gate"
    scorer: str = ""
    margin: float = 0.0
    selective: Selective = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    _skips: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, leaf: Strategy, name: str, depth: int, margin: float) -> Gated:
        return cls(depth, name, margin, Selective(leaf, k=depth, rest="drop", skip_if_margin=margin))

    @property
    def name(self) -> str:
        return f"{self.scorer}@{self.depth}?margin>={self.margin:g}"

    @property
    def scorers(self) -> tuple[str, ...]:
        return (self.scorer,)

    def inner_spec(self) -> Spec | str:
        return self.scorer

    def spec(self) -> Spec:
        return {"selective": self.scorer, "k": self.depth, "rest": "drop", "skip_if_margin": self.margin}

    def skips(self, q: QueryData) -> bool:
        if q.qid not in self._skips:
            self._skips[q.qid] = self.selective.gate(Ranking.start(q.candidates)) is not None
        return self._skips[q.qid]

    def rank(self, q: QueryData, table: ScoreTable) -> tuple[list[int], list[Call]]:
        if self.skips(q):
            return list(range(len(q.candidates))), []
        head = self.head(q)
        return _ranked(head, table.values(self.scorer, q, head)), [(self.scorer, head)]


#: fusion weights searched: (scorer, retrieval) under min-max fusion, then RRF (None)
FUSION_WEIGHTS: tuple[tuple[float, float] | None, ...] = ((0.9, 0.1), (0.7, 0.3), (0.5, 0.5), None)
#: the gate's margins are these quantiles of the queries' top-1 retrieval margins (no judgments read)
GATE_QUANTILES: tuple[float, ...] = (0.5, 0.75)


def _margins(queries: Sequence[QueryData]) -> list[float]:
    out = []
    for q in queries:
        scores = sorted(
            (c.retrieval_score for c in q.candidates if c.retrieval_score is not None), reverse=True
        )
        if len(scores) >= 2:
            out.append(scores[0] - scores[1])
    return sorted(out)


def gate_margins(queries: Sequence[QueryData]) -> list[float]:
    """The gate thresholds searched: quantiles of the top-1 margins, rounded to 3 significant
    digits; none where some candidate has no retrieval score (the gate needs every one)."""
    if any(c.retrieval_score is None for q in queries for c in q.candidates):
        return []
    margins = _margins(queries)
    if not margins:
        return []
    picked = {float(f"{margins[min(len(margins) - 1, int(p * len(margins)))]:.3g}") for p in GATE_QUANTILES}
    return sorted(m for m in picked if m > 0)


def build_space(
    leaves: Mapping[str, Strategy],
    depths: Sequence[int],
    queries: Sequence[QueryData],
    per_pair_ms: Mapping[str, float],
) -> list[Config]:
    """Every configuration: each scorer at each depth, alone, fused with the retrieval score
    (weights, RRF; weighted fusion only for scorers with scores), gated; and every cascade of a
    cheaper scorer (by ``per_pair_ms``) into a costlier one, at each depth and each smaller keep."""
    names = list(leaves)
    fusable = all(
        not any(c.retrieval_score is None for c in q.candidates)
        or all(c.retrieval_score is None for c in q.candidates)
        for q in queries
    )
    margins = gate_margins(queries)
    space: list[Config] = []
    for name in names:
        for d in depths:
            space += _one_scorer(leaves[name], name, d, fusable, margins)
    by_cost = sorted(names, key=lambda n: (per_pair_ms[n], n))
    for i, first in enumerate(by_cost):
        for second in by_cost[i + 1 :]:
            for d in depths:
                space += [Cascaded(d, first, second, m) for m in depths if m < d]
    return space


def _one_scorer(
    leaf: Strategy, name: str, depth: int, fusable: bool, margins: Sequence[float]
) -> list[Config]:
    """One scorer at one depth: alone, fused with the retrieval score (where every candidate has
    one or none does; weighted fusion only for a scorer with scores), and gated at each margin."""
    out: list[Config] = [Single(depth, name)]
    for w in FUSION_WEIGHTS if fusable else ():
        if w is None or leaf.scale is not ScoreScale.RANK_ONLY:
            out.append(Fused.of(leaf, name, depth, w))
    out += [Gated.of(leaf, name, depth, m) for m in margins]
    return out


def describe(config: Config) -> dict[str, Any]:
    """A configuration as plain data, for the report's table."""
    return {"name": config.name, "kind": config.kind, "depth": config.depth, "scorers": list(config.scorers)}
