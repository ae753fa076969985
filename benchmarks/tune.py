"""`tune` on SciFact at three latency budgets: what it chooses, how that does on held-out queries,
predicted against measured p95, and what the search costs against scoring each scorer once.

The default space (BM25, the packaged all-MiniLM-L6-v2 as a bi-encoder, MaxSim over the same
weights; BM25 top-200 candidates) is scored and timed once (``prepare``); each budget then chooses
on the dev half of the test queries and reports on the other half. ColBERT document vectors are
cached on disk (``$RERANKERS_CACHE``), as the command caches them: a first run encodes the candidate
pool (minutes), which counts as scoring.

    python benchmarks/tune.py [--budgets 50,200,1000] [--max-depth 200] [--queries N] [--percentile 95]

Printed: the CPU and its flags, the time each phase took, then one row per budget: the choice, its
test NDCG@10 with the 95 % bootstrap interval, the paired difference to the first stage and to the
best configuration regardless of budget, predicted and measured p95, and the whole search's time
as a multiple of scoring each scorer once at the largest depth. Then the measured rivals, the
frontier and the first stage by depth.
"""

from __future__ import annotations

import argparse
import logging
import time

import _common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="50,200,1000", help="p95 budgets in ms, comma-separated")
    parser.add_argument("--max-depth", type=int, default=200)
    parser.add_argument("--queries", type=int, default=None, help="first N test queries only")
    parser.add_argument("--percentile", default="95")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    import torch

    from rerankers_plugins.eval.tune import DEFAULT_SCORERS, prepare

    print(_common.cpu_description())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {_common.DATA}")
    t0 = time.perf_counter()
    tuning = prepare(
        _common.DATA,
        dict(DEFAULT_SCORERS),
        max_depth=args.max_depth,
        queries=args.queries,
        concurrency=args.concurrency,
        progress=False,
    )
    prepared = time.perf_counter() - t0
    t = tuning.search.timings
    print(
        f"\nprepared in {prepared:.0f} s: scoring {t['scoring_s']:.0f} s (each scorer once at the largest depth, "
        f"index included: {t['baseline_s']:.0f} s; ColBERT index {t['index_s']:.0f} s), timing "
        f"{t['calibrate_s']:.0f} s, simulating {t['simulate_s']:.1f} s; {len(tuning.search.names)} configurations\n"
    )
    reports = []
    for budget in (float(b) for b in args.budgets.split(",")):
        r = tuning.report(budget_ms=budget, percentile=args.percentile)
        reports.append(r)
        search_s = r.timings["total_s"] - t["baseline_s"]
        print(
            f"budget {budget:g} ms: chose {r.chosen.name if r.chosen else 'nothing'} in {r.timings['total_s']:.0f} s ({search_s:.0f} s beyond scoring)"
        )

    label = reports[0].label
    print(
        f"\n| budget ({label}) | chosen | test NDCG@10 [95 % CI] | vs first stage | vs best regardless of budget "
        f"| predicted {label} ms | measured {label} ms | error | search / scoring once |"
    )
    print("|---:|---|---|---|---|---:|---:|---:|---:|")
    for r in reports:
        ratio = r.timings["total_s"] / max(t["baseline_s"], 1e-9)
        if r.choice is None:
            c = r.cheapest
            print(
                f"| {r.budget_ms:g} | nothing fits (cheapest {c.name}: {c.predicted_ms:.1f} ms) | | | | | | | {ratio:.2f}x |"
            )
            continue
        ch, m = r.choice, r.measured[0]
        print(
            f"| {r.budget_ms:g} | {ch.config.name} | {ch.test_ndcg:.3f} [{ch.test_ci[0]:.3f}, {ch.test_ci[1]:.3f}] "
            f"| {ch.vs_first_stage} | {ch.vs_best} ({ch.best_any}) | {m.predicted_ms:.1f} | {m.measured_ms:.1f} "
            f"| {m.error:+.0%} | {ratio:.2f}x |"
        )
    last = reports[-1]
    print(f"\nfirst stage alone: test NDCG@10 {last.first_stage_ndcg:.3f}; {last.split}")
    for r in reports:
        print(f"\nbudget {r.budget_ms:g} ms: measured\n\n{r.measured_table()}")
    print(f"\nPareto frontier (dev queries), budget {last.budget_ms:g} ms\n\n{last.frontier_table()}")
    print(f"\nthe first stage by depth (test queries)\n\n{last.depth_table()}")
    print("\ncost models:")
    for name, text in last.cost_models.items():
        print(f"- {name}: {text}")


if __name__ == "__main__":
    main()
