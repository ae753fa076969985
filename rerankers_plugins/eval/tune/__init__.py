"""Choose a reranking pipeline under a latency budget, on your data, your first stage and this machine.

    from rerankers_plugins.eval.tune import tune
    report = tune("data/scifact", budget_ms=200)        # BM25, the bi-encoder and MaxSim by default
    print(report.summary())
    report.write("tune-out/")                           # pipeline.toml, report.md, frontier.png

    tuning = prepare("data/scifact")                    # the expensive half, once...
    reports = [tuning.report(budget_ms=b) for b in (50, 200, 1000)]   # ...any number of budgets

How it chooses, in order:

The modules: :mod:`.inputs` (the budget, the scorers, the dev / test plan), :mod:`.space` (the
configurations and their replay), :mod:`.cost` (the latency model), :mod:`.search` (scoring,
timing, replaying: once), :mod:`.choose` (the choice for one budget), :mod:`.report` (what is
returned and written).

1. **Score once.** The first stage (BM25, a TREC run, or your LangChain / LlamaIndex retriever) gives
   every judged query its candidates up to ``max_depth``; each candidate scorer scores every
   query's candidates once (a scorer whose scores depend on the list, such as BM25 over the
   candidates, once per list it is given).
2. **Simulate the rest.** Every configuration (:mod:`rerankers_plugins.eval._space`: each scorer at
   each depth, fused with the retrieval score, gated, and cascades of a cheaper scorer into a
   costlier one) is replayed from those scores, exactly as its pipeline ranks.
3. **Latency on this machine.** A cost model (:mod:`rerankers_plugins.eval._cost`) fitted from timed
   calls on fresh queries, with ``concurrency`` requests in flight, predicts each configuration's
   latency percentile per query; the chosen configuration and its nearest rivals are then run for
   real and their measured latency reported beside the prediction.
4. **Honest statistics.** Queries are split into dev and test (seeded; the qrels' own splits with
   ``dev_split``; 5 folds under 200 judged queries). On dev only: among the configurations whose
   predicted percentile fits ``budget_ms * (1 - headroom)``, the cheapest whose dev NDCG@10 is
   within the 95 % paired bootstrap interval of the best that fits, and no worse than the first
   stage alone (:mod:`.choose`). Test NDCG@10 is reported with its interval and paired tests
   against the first stage alone and the best configuration regardless of budget.

Latency is the rerank call's, per query (the first stage is yours, the same for every configuration).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

from rerankers_plugins._validate import as_int
from rerankers_plugins.eval.first_stage import FirstStageLike, first_stage_candidates
from rerankers_plugins.eval.tune.choose import Decision
from rerankers_plugins.eval.tune.inputs import (
    DEFAULT_SCORERS,
    check_budget,
    check_headroom,
    check_percentile,
    leaves,
    plan,
)
from rerankers_plugins.eval.tune.report import TuneReport
from rerankers_plugins.eval.tune.search import DEPTHS, Search
from rerankers_plugins.eval.tune.space import QueryData
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.spec import Spec

__all__ = ["DEFAULT_SCORERS", "DEPTHS", "SearchOptions", "TuneReport", "Tuning", "prepare", "tune"]


class SearchOptions(TypedDict, total=False):
    """:func:`prepare`'s keyword options, which :func:`tune` passes on (the same names and meaning)."""

    concurrency: int
    seed: int
    max_depth: int
    first_stage: FirstStageLike
    split: str
    dev_split: str | None
    queries: int | None
    cross_encoders: Sequence[str]
    progress: bool


class Tuning:
    """The scored, timed and replayed search of :func:`prepare`: :meth:`report` chooses for a budget."""

    def __init__(self, decision: Decision, prepared_s: float) -> None:
        self._decision = decision
        self.prepared_s = prepared_s

    @property
    def search(self) -> Search:
        return self._decision.search

    def report(
        self, *, budget_ms: float, percentile: float | str = 95.0, headroom: float = 0.1
    ) -> TuneReport:
        """The choice for ``budget_ms`` at ``percentile`` of per-query latency (95, or ``"p50"``),
        keeping ``headroom`` of the budget free for the noise between this machine now and production."""
        budget = check_budget(budget_ms)
        pct = check_percentile(percentile)
        share = check_headroom(headroom)
        t0 = time.perf_counter()
        out = self._decision.report(budget, pct, share)
        out.timings["choose_s"] = time.perf_counter() - t0 - out.timings.get("real_s", 0.0)
        out.timings["total_s"] = self.prepared_s + time.perf_counter() - t0
        return out


def prepare(
    data: str | Path,
    scorers: Mapping[str, ScorerLike | Spec] | None = None,
    *,
    concurrency: int = 1,
    seed: int = 0,
    max_depth: int = 200,
    first_stage: FirstStageLike = None,
    split: str = "test",
    dev_split: str | None = None,
    queries: int | None = None,
    cross_encoders: Sequence[str] = (),
    progress: bool = True,
) -> Tuning:
    """The expensive half of :func:`tune` (scoring, timing, replaying), for any number of budgets.

    ``scorers``: name -> a registry spec (``{"scorer": "colbert", "model": "minilm"}``) or a built
    registry scorer; None: :data:`DEFAULT_SCORERS`. ``cross_encoders``: cross-encoder directories
    (or Hub ids) added to them. ``first_stage``: None (BM25 over the corpus), a TREC run file, or a
    retriever (LangChain, LlamaIndex, or a function ``query -> [Candidate]``), called once per
    query. ``concurrency``: requests in flight while timing. ``seed``: of the dev / test split, the
    bootstrap and the timed queries. ``max_depth``: the most first-stage candidates reranked.
    ``split`` / ``dev_split``: the qrels files. ``queries``: the first N judged queries of each
    split only.
    """
    t0 = time.perf_counter()
    concurrency = as_int(concurrency, "concurrency", minimum=1) or 1
    max_depth = as_int(max_depth, "max_depth", minimum=1) or 1
    seed = as_int(seed, "seed") or 0
    limit = as_int(queries, "queries", minimum=1, allow_none=True)
    queries_plan, dataset = plan(data, split, dev_split, seed, limit)
    loaded = leaves(scorers, cross_encoders)
    qids = sorted(queries_plan.qrels)
    fs = first_stage_candidates(
        first_stage,
        dataset.corpus,
        queries_plan.queries,
        qids,
        max_depth,
        known_queries=dataset.query_ids or None,
    )
    by_id = {q: QueryData(q, queries_plan.queries[q], fs.candidates[q], queries_plan.qrels[q]) for q in qids}
    deepest = min(max_depth, fs.depth)
    depths = [d for d in DEPTHS if d <= deepest] or [deepest]
    search = Search(loaded, by_id, depths, concurrency, seed, progress)
    search.run()
    name = Path(str(data)).name or str(data)
    return Tuning(Decision(search, queries_plan, fs, name), time.perf_counter() - t0)


def tune(
    data: str | Path,
    scorers: Mapping[str, ScorerLike | Spec] | None = None,
    *,
    budget_ms: float,
    percentile: float | str = 95.0,
    headroom: float = 0.1,
    **options: Unpack[SearchOptions],
) -> TuneReport:
    """Choose the pipeline for ``budget_ms`` (see the module docstring) and report why.

    ``percentile``: of per-query latency (95, or ``"p50"``). ``headroom``: the share of the budget
    kept free for the noise between this measurement and production. ``options`` are
    :func:`prepare`'s (:class:`SearchOptions`).
    """
    check_budget(budget_ms)  # bad options fail before minutes of scoring
    check_percentile(percentile)
    check_headroom(headroom)
    tuning = prepare(data, scorers, **options)
    return tuning.report(budget_ms=budget_ms, percentile=percentile, headroom=headroom)
