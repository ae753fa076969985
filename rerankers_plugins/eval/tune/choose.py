"""``tune``'s cheap half, once per budget: select on dev queries, report on test queries, run the
choice and its rivals for real.

The rule, on one fold's dev queries: among the configurations whose predicted latency percentile
fits ``budget * (1 - headroom)``, take the best dev NDCG@10. A configuration that fits is *as good*
when the 95 % paired bootstrap interval of its per-query difference to the best holds 0 (the
best's interval, read query by query: NDCG varies far more between queries than between
configurations on one query) and it is no worse than the first stage alone (not reranking costs
nothing). Of those, the cheapest, where costs within :data:`COST_TIE` of the cheapest count as
equal and the better dev NDCG@10 of those wins (then the shallower, then the simpler kind: the
seed, not timing noise, decides between configurations of equal quality).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rerankers_plugins.eval import stats
from rerankers_plugins.eval.first_stage import FirstStage
from rerankers_plugins.eval.metrics import score_query
from rerankers_plugins.eval.tune.cost import timed
from rerankers_plugins.eval.tune.inputs import Plan
from rerankers_plugins.eval.tune.report import Choice, ConfigResult, DepthRow, Measured, TuneReport
from rerankers_plugins.eval.tune.search import FIRST_STAGE, Search
from rerankers_plugins.eval.tune.space import QueryData
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.pipeline.rerank import rerank
from rerankers_plugins.spec import build_pipeline, inline

__all__ = ["COST_TIE", "Decision", "Selection"]

#: predicted costs within this fraction of the cheapest count as equal when choosing
COST_TIE = 0.10
#: simpler first, where quality and cost tie
KIND_ORDER = ("single", "fusion", "gate", "cascade")
#: the real runs of the choice and its rivals take at most this share of the scoring time...
REAL_RUN_SHARE = 0.15
#: ...and at least this many test queries each (all of them where there are fewer)
MIN_REAL_QUERIES = 20


@dataclass(frozen=True)
class Selection:
    """What one set of dev queries chose."""

    fits: list[str]
    chosen: str | None
    best_fit: str | None
    best_any: str  #: the best dev NDCG@10 regardless of budget
    cheapest: str


@dataclass(frozen=True)
class _Timed:
    """A configuration's real run on a sample of test queries."""

    sample: list[str]
    ms: list[float]
    agree: int


def _ranked_ids(out: dict[str, list[str]], q: QueryData, pipeline: ScorerLike) -> None:
    """Rerank ``q`` with ``pipeline`` and keep the ids in the order returned."""
    out[q.qid] = [str(s.id) for s in rerank(q.text, q.candidates, pipeline)]


class Decision:
    """Choices for any budget from one :class:`Search`; real runs are kept, so a configuration
    chosen for two budgets is run once."""

    def __init__(self, search: Search, plan: Plan, first_stage: FirstStage, dataset: str) -> None:
        self.search, self.plan, self.fs, self.dataset = search, plan, first_stage, dataset
        self._timed: dict[str, _Timed] = {}

    def select(self, dev: Sequence[str], budget: float, pct: float, headroom: float) -> Selection:
        """The choice on ``dev`` (the module docstring's rule)."""
        s = self.search
        names = s.names
        cost = {n: s.latency(n, dev, pct) for n in names}
        quality = {n: s.mean_ndcg(n, dev) for n in names}
        best_any = min(names, key=lambda n: (-quality[n], cost[n], n))
        cheapest = min(names, key=lambda n: (cost[n], -quality[n], n))
        fits = [n for n in names if cost[n] <= budget * (1.0 - headroom)]
        if not fits:
            return Selection([], None, None, best_any, cheapest)
        best = min(fits, key=lambda n: (-quality[n], cost[n], n))
        chosen = self._cheapest_near(best, fits, dev, quality, cost)
        return Selection(fits, chosen, best, best_any, cheapest)

    def _cheapest_near(
        self,
        best: str,
        fits: Sequence[str],
        dev: Sequence[str],
        quality: Mapping[str, float],
        cost: Mapping[str, float],
    ) -> str:
        """Of the configurations that fit, those whose paired interval of the difference to
        ``best`` holds 0 and that are no worse than the first stage: the cheapest (costs within
        ``COST_TIE`` tie: the better, then the simpler)."""
        s = self.search
        intervals = stats.paired_intervals(
            [s.ndcg[best][q] for q in dev], {n: [s.ndcg[n][q] for q in dev] for n in fits}, seed=s.seed
        )
        first_stage = s.mean_ndcg(FIRST_STAGE, dev)
        near = [n for n in fits if intervals[n][0] <= 0.0 and (quality[n] >= first_stage or n == best)]
        floor = min(cost[n] for n in near)
        tied = [n for n in near if cost[n] <= floor * (1.0 + COST_TIE)]
        return min(tied, key=lambda n: (-quality[n], *self._simpler(n)))

    def _simpler(self, name: str) -> tuple[int, int, str]:
        """Between equally good configurations that cost alike: the shallower, then the simpler
        kind (so that timing noise cannot flip a choice the seed fixed)."""
        config = self.search.configs[name]
        return config.depth, KIND_ORDER.index(config.kind), name

    # -- the report ------------------------------------------------------------------------------

    def _frontier(self, dev: Sequence[str], pct: float) -> set[str]:
        s = self.search
        best, out = -1.0, set()
        for n in sorted(s.names, key=lambda n: (s.latency(n, dev, pct), -s.mean_ndcg(n, dev), n)):
            quality = s.mean_ndcg(n, dev)
            if quality > best:
                out.add(n)
                best = quality
        return out

    def _depth_rows(self, test: Sequence[str]) -> list[DepthRow]:
        rows = []
        first = stats.mean([self.search.ndcg[FIRST_STAGE][qid] for qid in test])
        for d in self.search.depths:
            recall, oracle = [], []
            for qid in test:
                q = self.search.q[qid]
                ids = [str(c.id) for c in q.candidates[:d]]
                recall.append(score_query(f"recall@{d}", q.judged, ids))
                perfect = sorted(ids, key=lambda i: -q.judged.get(i, 0))  # stable: ties keep their order
                oracle.append(score_query("ndcg@10", q.judged, perfect))
            rows.append(DepthRow(d, stats.mean(recall), first, stats.mean(oracle), self.fs.fewer_than(d)))
        return rows

    def _cost_text(self, name: str) -> str:
        assert self.search.model is not None
        c = self.search.model.leaves[name]
        cap = "uncapped" if c.cap is None else f"capped at {c.cap}"
        spread = sorted(abs(r - 1.0) for r in c.ratios)
        return (
            f"{c.a:.2f} ms + {c.b:.4f} ms per pair + {c.c:.5f} ms per word (words per text {cap}); "
            f"{c.samples} timed calls, median error {spread[len(spread) // 2]:.0%}"
        )

    def report(self, budget: float, pct: float, headroom: float) -> TuneReport:
        """Select on each fold's dev queries and report on its test queries; the deployed choice is
        the one fold's, or with k folds the selection on every query. Then measure it."""
        s, plan = self.search, self.plan
        selections = [self.select(dev, budget, pct, headroom) for dev, _ in plan.folds]
        if len(plan.folds) == 1:
            dev_ids, test_ids = plan.folds[0]
            final = selections[0]
        else:
            dev_ids = test_ids = sorted(s.q)
            final = self.select(dev_ids, budget, pct, headroom)
        frontier = self._frontier(dev_ids, pct)
        specs = {n: leaf.spec for n, leaf in s.leaves.items()}
        results = {
            n: ConfigResult(
                n,
                s.configs[n].kind,
                s.configs[n].depth,
                inline(s.configs[n].spec(), specs),
                s.mean_ndcg(n, dev_ids),
                s.mean_ndcg(n, test_ids),
                s.latency(n, dev_ids, 50.0),
                s.latency(n, dev_ids, pct),
                n in final.fits,
                n in frontier,
            )
            for n in s.names
        }
        report = TuneReport(
            dataset=self.dataset,
            first_stage=self.fs.name,
            first_stage_k=self.fs.asked,
            budget_ms=budget,
            percentile=pct,
            concurrency=s.concurrency,
            seed=s.seed,
            headroom=headroom,
            split=plan.method,
            dev_ids=list(dev_ids),
            test_ids=list(test_ids),
            depths=self._depth_rows(test_ids),
            configs=list(results.values()),
            first_stage_ndcg=stats.mean([s.ndcg[FIRST_STAGE][q] for q in test_ids]),
            choice=None,
            cheapest=results[final.cheapest],
            scorers=specs,
            cost_models={n: self._cost_text(n) for n in s.leaves},
            warnings=list(plan.warnings),
            notes=list(self.fs.notes),
            timings={k: v for k, v in s.timings.items()},
        )
        if final.chosen is not None:
            report.choice = self._choice(selections, results[final.chosen], final, report)
        t0 = time.perf_counter()
        self.measure(report, self._rivals(report, final), pct)
        report.timings["real_s"] = time.perf_counter() - t0
        return report

    def _choice(
        self, selections: Sequence[Selection], chosen: ConfigResult, final: Selection, report: TuneReport
    ) -> Choice:
        s = self.search
        picked, first, best, fold_names = [], [], [], []
        for (_, test), sel in zip(self.plan.folds, selections, strict=True):
            pick = sel.chosen
            if pick is None:  # this fold's dev queries fit nothing: its cheapest stands in
                pick = sel.cheapest
                report.warnings.append(
                    f"a fold fits nothing within the budget; its cheapest, {pick}, stands in"
                )
            fold_names.append(pick)
            picked += [s.ndcg[pick][q] for q in test]
            first += [s.ndcg[FIRST_STAGE][q] for q in test]
            best += [s.ndcg[sel.best_any][q] for q in test]
        return Choice(
            chosen,
            stats.mean(picked),
            stats.bootstrap_ci(picked, seed=s.seed),
            len(picked),
            stats.paired_test(picked, first, seed=s.seed),
            stats.paired_test(picked, best, seed=s.seed),
            final.best_any,
            fold_names if len(self.plan.folds) > 1 else [],
        )

    @staticmethod
    def _rivals(report: TuneReport, final: Selection) -> list[str]:
        """The configurations run for real: the choice, its neighbours on the frontier and the best
        that fits; the cheapest when nothing fits."""
        if report.chosen is None:
            return [report.cheapest.name]
        front = [c.name for c in report.frontier]
        out = [report.chosen.name]
        if report.chosen.name in front:
            i = front.index(report.chosen.name)
            out += front[max(0, i - 1) : i] + front[i + 1 : i + 2]
        if final.best_fit is not None:
            out.append(final.best_fit)
        return list(dict.fromkeys(out))[:4]

    def _run(self, name: str, test: Sequence[str], share_s: float) -> _Timed:
        """``name``'s pipeline, rebuilt from its spec over the loaded scorers, run on as many test
        queries as ``share_s`` seconds allow (at least MIN_REAL_QUERIES), ``concurrency`` in flight."""
        s = self.search
        mean_s = max(stats.mean([s.pred[name][q] for q in test]) / 1000.0, 1e-6)
        n = min(len(test), max(MIN_REAL_QUERIES, int(share_s * s.concurrency / mean_s)))
        sample = sorted(random.Random(f"{s.seed}:measure:{name}").sample(list(test), n))
        config = s.configs[name]
        pipeline = build_pipeline(config.spec(), {k: leaf.strategy for k, leaf in s.leaves.items()})
        warm = s.q[sample[0]]
        rerank(warm.text, warm.candidates, pipeline)
        got: dict[str, list[str]] = {}
        ms = timed([functools.partial(_ranked_ids, got, s.q[qid], pipeline) for qid in sample], s.concurrency)
        agree = 0
        for qid in sample:
            order, _ = config.rank(s.q[qid], s.table)
            agree += got[qid] == [str(s.q[qid].candidates[k].id) for k in order]
        return _Timed(sample, ms, agree)

    def measure(self, report: TuneReport, names: Sequence[str], pct: float) -> None:
        """Run ``names`` for real on the report's test queries and add what was measured."""
        s = self.search
        allowed = REAL_RUN_SHARE * max(s.timings["scoring_s"], 1.0)
        for i, name in enumerate(names):
            if name not in self._timed:
                share = allowed / 2 if i == 0 else allowed / (2 * max(1, len(names) - 1))
                self._timed[name] = self._run(name, report.test_ids, share)
            t = self._timed[name]
            report.measured.append(
                Measured(
                    name,
                    len(t.sample),
                    s.latency(name, t.sample, 50.0),
                    s.latency(name, t.sample, pct),
                    stats.percentile(t.ms, 50.0),
                    stats.percentile(t.ms, pct),
                    t.agree,
                )
            )
        chosen = report.measured[0] if report.chosen is not None and report.measured else None
        if chosen is not None and chosen.measured_ms > report.budget_ms:
            report.warnings.append(
                f"{chosen.name} measured {chosen.measured_ms:.1f} ms {report.label} on {chosen.queries} test "
                f"queries, over the {report.budget_ms:g} ms budget (predicted {chosen.predicted_ms:.1f}): the "
                "machine may be busier now than while timing; raise headroom or re-run"
            )
