"""``tune``'s expensive half, done once for any number of budgets: score every query's candidates
once per scorer, time the scorers and the pipelines, replay every configuration, predict its
latency per query."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Mapping, Sequence

from rerankers_plugins.eval import stats
from rerankers_plugins.eval.harness import index_pool, progress_bar
from rerankers_plugins.eval.tune.cost import LeafCost, Overhead, mixture_percentile, timed
from rerankers_plugins.eval.tune.inputs import Leaf
from rerankers_plugins.eval.tune.space import (
    Config,
    FirstStageOnly,
    QueryData,
    ScoreTable,
    build_space,
    leaf_values,
    ndcg10,
)
from rerankers_plugins.pipeline.rerank import rerank
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.spec import build_pipeline
from rerankers_plugins.types import ScoreScale

__all__ = ["DEPTHS", "FIRST_STAGE", "Costs", "Replay", "Search"]

#: the depths searched (those up to the first stage's depth and ``max_depth``)
DEPTHS: tuple[int, ...] = (10, 20, 30, 50, 100, 200)
#: timed calls per scorer and size (fresh queries each), and per configuration kind and depth
REPEATS = 8
MIN_REPEATS = 3
#: the timed leaf calls score at most this share of the pairs the scoring does (above MIN_REPEATS)
CALIBRATION_SHARE = 0.1
#: the first stage alone: the configuration every choice is tested against
FIRST_STAGE = FirstStageOnly(0).name


class Costs:
    """Per-scorer and per-kind cost models, and each configuration's predicted latency per query."""

    def __init__(self, leaves: Mapping[str, LeafCost], overhead: Mapping[str, Overhead]) -> None:
        self.leaves, self.overhead = dict(leaves), dict(overhead)

    def predict(
        self, config: Config, q: QueryData, calls: Sequence[tuple[str, tuple[int, ...]]]
    ) -> tuple[float, str | None]:
        """``config``'s predicted milliseconds on ``q`` (whose leaf calls were ``calls``), and the
        scorer whose call costs most (its noise is the configuration's)."""
        pairs = sum(len(p) for _, p in calls)
        total = (
            self.overhead[config.kind].predict(len(q.candidates), pairs)
            if config.kind in self.overhead
            else 0.0
        )
        heaviest, heaviest_ms = None, -1.0
        for name, positions in calls:
            ms = self.leaves[name].predict([q.words[i] for i in positions])
            total += ms
            if ms > heaviest_ms:
                heaviest, heaviest_ms = name, ms
        return total, heaviest

    def ratios(self, config: Config, heaviest: str | None) -> tuple[float, ...]:
        """The measured / predicted ratios a configuration's latency varies by."""
        if heaviest is not None:
            return self.leaves[heaviest].ratios
        over = self.overhead.get(config.kind)
        return over.ratios if over is not None else (1.0,)


class Replay(BaseScorer):
    """A leaf that answers from the score table at no model cost: the pipeline's own overhead is
    what timing it measures."""

    def __init__(
        self, name: str, scale: ScoreScale, pure: bool, table: Mapping[tuple[str, str], float]
    ) -> None:
        self.name, self.scale, self.pure, self._table = name, scale, pure, table

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [self._table.get((query, t), 0.0) for t in texts]


class Search:
    """What every budget's choice is read from: the scores, each configuration's per-query NDCG@10
    and predicted latency, and the time each phase took (:meth:`run` does it all)."""

    def __init__(
        self,
        leaves: Mapping[str, Leaf],
        queries: Mapping[str, QueryData],
        depths: Sequence[int],
        concurrency: int,
        seed: int,
        progress: bool,
    ) -> None:
        self.leaves, self.q, self.depths = dict(leaves), dict(queries), list(depths)
        self.concurrency, self.seed, self.progress = concurrency, seed, progress
        self.table = ScoreTable({n: leaf.strategy for n, leaf in leaves.items()}, on_call=self._scored_list)
        self.samples: dict[str, list[tuple[list[int], float]]] = {n: [] for n in leaves}
        self.timings: dict[str, float] = {
            "index_s": 0.0,
            "scoring_s": 0.0,
            "baseline_s": 0.0,
            "calibrate_s": 0.0,
        }
        self.configs: dict[str, Config] = {}
        self.ndcg: dict[str, dict[str, float]] = {}
        self.calls: dict[str, dict[str, list[tuple[str, tuple[int, ...]]]]] = {}
        self.pred: dict[str, dict[str, float]] = {}
        self.heaviest: dict[str, str | None] = {}
        self.model: Costs | None = None

    def _scored_list(self, name: str, seconds: float, q: QueryData, positions: tuple[int, ...]) -> None:
        """A leaf scored on demand (one whose scores depend on the list): scoring time."""
        self.timings["scoring_s"] += seconds
        if len(positions) == len(q.candidates):
            self.timings["baseline_s"] += seconds

    def _repeats(self) -> int:
        """Timed calls per scorer and size: REPEATS, fewer (at least MIN_REPEATS) where that would
        score more than CALIBRATION_SHARE of what the scoring itself scores."""
        scored = sum(min(len(q.candidates), max(self.depths)) for q in self.q.values())
        fit = int(CALIBRATION_SHARE * scored / max(1, sum(set(self.depths))))
        return max(MIN_REPEATS, min(REPEATS, fit))

    def _calibration_plan(self) -> list[tuple[str, QueryData, int]]:
        """The timed leaf calls: each scorer at every depth, :meth:`_repeats` fresh queries each, in
        a seeded random order (drift in the machine's speed then tilts no scorer and no size)."""
        repeats = self._repeats()
        plan = [
            (name, q, size)
            for name in self.leaves
            for size in sorted(set(self.depths))
            for q in self._fresh(size, repeats, name)
        ]
        random.Random(f"{self.seed}:calibration").shuffle(plan)
        return plan

    def _time_leaf(self, name: str, q: QueryData, size: int) -> None:
        t0 = time.perf_counter()
        leaf_values(self.leaves[name].strategy, q.text, q.candidates[:size])
        ms = (time.perf_counter() - t0) * 1000.0
        self.samples[name].append((list(q.words[:size]), ms))
        self.timings["calibrate_s"] += ms / 1000.0

    def score(self) -> None:
        """Index the candidate pool (backends with document vectors), then score every query's
        candidates once with each pure leaf. That time is the search's baseline; those calls are
        no cost samples (each touches its documents first, a cold cache later calls do not see).
        With one request in flight, the timed calls of :meth:`calibrate_leaves` are spread between
        them, so that the cost model samples the machine over the whole scoring, not one moment."""
        pool = list({c.id: c for q in self.q.values() for c in q.candidates}.values())
        for name, leaf in self.leaves.items():
            spent = index_pool(name, leaf.strategy, pool)
            self.timings["index_s"] += spent
            self.timings["scoring_s"] += spent
            self.timings["baseline_s"] += spent
        first = max(self.q.values(), key=lambda q: len(q.candidates))
        for name in self.leaves:  # a scorer's first call pays one-off costs
            leaf_values(self.leaves[name].strategy, first.text, first.candidates[: min(self.depths)])
        plan = self._calibration_plan() if self.concurrency == 1 else []
        queries = list(self.q.values())
        pure = [n for n in self.leaves if self.table.pure(n)]
        done = 0
        for i, q in enumerate(progress_bar(queries, len(queries), "scoring", self.progress)):
            for name in pure:
                t0 = time.perf_counter()
                self.table.fill(name, q)
                spent = time.perf_counter() - t0
                self.timings["scoring_s"] += spent
                self.timings["baseline_s"] += spent
            while done < len(plan) * (i + 1) // len(queries):
                self._time_leaf(*plan[done])
                done += 1

    def _fresh(self, size: int, count: int, salt: str) -> list[QueryData]:
        """``count`` queries (seeded, distinct where there are enough) with at least ``size``
        candidates where possible: fresh inputs for timed calls."""
        ordered = sorted(self.q.values(), key=lambda q: q.qid)
        wide = [q for q in ordered if len(q.candidates) >= size] or [
            max(ordered, key=lambda q: len(q.candidates))
        ]
        rng = random.Random(f"{self.seed}:{salt}:{size}")
        picked = rng.sample(wide, min(count, len(wide)))
        return picked + [rng.choice(wide) for _ in range(count - len(picked))]

    def calibrate_leaves(self) -> dict[str, LeafCost]:
        """Each scorer's cost model, from its timed calls: those spread through the scoring, or
        with several requests in flight, the same plan run now with ``concurrency`` threads."""
        if self.concurrency > 1:
            t0 = time.perf_counter()
            plan = self._calibration_plan()
            calls = [
                functools.partial(leaf_values, self.leaves[n].strategy, q.text, q.candidates[:z])
                for n, q, z in plan
            ]
            for (name, q, size), ms in zip(plan, timed(calls, self.concurrency), strict=True):
                self.samples[name].append((list(q.words[:size]), ms))
            self.timings["calibrate_s"] += time.perf_counter() - t0
        return {name: LeafCost.fit([(w, t) for w, t in self.samples[name] if w]) for name in self.leaves}

    def simulate(self, configs: Sequence[Config]) -> None:
        """Every configuration replayed on every query: its NDCG@10 and its leaf calls."""
        t0, scored_before = time.perf_counter(), self.timings["scoring_s"]
        for config in progress_bar(configs, len(configs), "simulating configurations", self.progress):
            self.configs[config.name] = config
            ndcg, calls = {}, {}
            for q in self.q.values():
                order, made = config.rank(q, self.table)
                ndcg[q.qid] = ndcg10(q, order)
                calls[q.qid] = made
            self.ndcg[config.name], self.calls[config.name] = ndcg, calls
        lazy = self.timings["scoring_s"] - scored_before
        self.timings["simulate_s"] = time.perf_counter() - t0 - lazy

    def _replays(self) -> dict[str, Replay]:
        """Each leaf as a :class:`Replay` of its scores (a leaf scored per list answers 0.0: the
        overhead does not depend on the values)."""
        replays = {}
        for name, leaf in self.leaves.items():
            table: dict[tuple[str, str], float] = {}
            if self.table.pure(name):
                for q in self.q.values():
                    values = self.table.full(name, q)
                    table.update({(q.text, c.text): v for c, v in zip(q.candidates, values, strict=True)})
            replays[name] = Replay(name, leaf.strategy.scale, self.table.pure(name), table)
        return replays

    def calibrate_overhead(self, space: Sequence[Config]) -> dict[str, Overhead]:
        """Time the pipeline's own work per configuration kind: ``rerank`` with leaves that answer
        from the score table, at each depth, on fresh queries."""
        t0 = time.perf_counter()
        replays = self._replays()
        out = {}
        for kind in sorted({c.kind for c in space}):
            representatives = {c.depth: c for c in space if c.kind == kind}
            plan = []
            for depth, config in sorted(representatives.items()):
                pipeline = build_pipeline(config.spec(), replays)
                plan += [(config, q, pipeline) for q in self._fresh(depth, REPEATS, f"overhead:{kind}")]
            random.Random(f"{self.seed}:order:{kind}").shuffle(plan)
            rerank(plan[0][1].text, plan[0][1].candidates, plan[0][2])  # warm-up
            ms = timed(
                [functools.partial(rerank, q.text, q.candidates, p) for _, q, p in plan], self.concurrency
            )
            samples = [
                (len(q.candidates), sum(len(pos) for _, pos in self.calls[c.name][q.qid]), t)
                for (c, q, _), t in zip(plan, ms, strict=True)
            ]
            out[kind] = Overhead.fit(samples)
        self.timings["calibrate_s"] += time.perf_counter() - t0
        return out

    def predict(self, model: Costs) -> None:
        """Each configuration's predicted latency on each query."""
        self.model = model
        for name, config in self.configs.items():
            per_query: dict[str, float] = {}
            shares: dict[str, float] = {}
            for qid, calls in self.calls[name].items():
                ms, heavy = model.predict(config, self.q[qid], calls)
                per_query[qid] = ms
                if heavy is not None:
                    shares[heavy] = shares.get(heavy, 0.0) + ms
            self.pred[name] = per_query
            self.heaviest[name] = max(shares, key=lambda n: (shares[n], n)) if shares else None

    def latency(self, name: str, qids: Sequence[str], p: float) -> float:
        """The predicted ``p``-th percentile of ``name``'s latency over ``qids``."""
        assert self.model is not None
        ratios = self.model.ratios(self.configs[name], self.heaviest[name])
        return mixture_percentile([self.pred[name][q] for q in qids], ratios, p)

    def mean_ndcg(self, name: str, qids: Sequence[str]) -> float:
        """Mean NDCG@10 of ``name`` over ``qids``."""
        return stats.mean([self.ndcg[name][q] for q in qids])

    def run(self) -> None:
        """Score, time the scorers, build the space, replay it, time the pipelines, predict."""
        self.score()
        leaf_costs = self.calibrate_leaves()
        per_pair = {n: c.per_pair_ms for n, c in leaf_costs.items()}
        space = build_space(
            {n: leaf.strategy for n, leaf in self.leaves.items()},
            self.depths,
            list(self.q.values()),
            per_pair,
        )
        self.simulate([FirstStageOnly(max(self.depths)), *space])
        self.predict(Costs(leaf_costs, self.calibrate_overhead(space)))

    @property
    def names(self) -> list[str]:
        """Every configuration searched (the first stage alone is not one)."""
        return [n for n, c in self.configs.items() if not isinstance(c, FirstStageOnly)]
