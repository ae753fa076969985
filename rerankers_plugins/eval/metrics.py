"""Ranking metrics as ranx defines them, in plain Python: nothing to compile at first use.

ranx's kernels are numba functions compiled on a process's first call (30 to 50 s on 2 CPU
cores in a fresh environment, before its on-disk cache exists); the evaluations this package runs
(a dev split during training, a BEIR test split, a few hundred queries of at most a few hundred
documents) take milliseconds in Python. The definitions follow ranx's (``ranx/metrics``): a
document is relevant when its judgment is >= 1; a run is read best first; a query with no relevant
document scores 0; the reported value is the mean over the judged queries (a judged query missing
from the run scores 0, a run's unjudged query is ignored: ranx's ``make_comparable``).

- ``ndcg@k``: DCG / ideal DCG with the gain ``rel`` and the discount ``log2(rank + 1)``
  (Järvelin and Kekäläinen, ranx's ``ndcg``; its ``ndcg_burges``, gain ``2**rel - 1``, is left to ranx).
- ``mrr@k``: 1 / rank of the first relevant document in the top k.
- ``map@k``: the sum of precision@i over the relevant documents at ranks i <= k, divided by the
  number of relevant documents.
- ``recall@k``: relevant documents in the top k / relevant documents.

Without ``@k`` a metric reads the whole run. Documents with equal scores keep the run's order
(ranx orders ties by an unstable sort). Other metric names are left to ranx
(:func:`supported` says which are handled here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

__all__ = ["evaluate", "ranked", "score_query", "supported"]


def _parse(name: str) -> tuple[str, int] | None:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; ``"mrr"`` -> ``("mrr", 0)`` (the whole run); None for a
    name this module does not compute."""
    metric, at, k = name.partition("@")
    if metric not in _METRICS:
        return None
    if not at:
        return metric, 0
    return (metric, int(k)) if k.isdigit() and int(k) > 0 else None


def supported(names: Sequence[str]) -> bool:
    """Whether every metric of ``names`` is computed here.

    >>> supported(["ndcg@10", "mrr@10", "map@100", "recall@100"]), supported(["hit_rate@5"])
    (True, False)
    """
    return all(_parse(n) is not None for n in names)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Document ids best first; equal scores keep their order in ``scores``.

    >>> ranked({"a": 0.1, "b": 0.9, "c": 0.9})
    ['b', 'c', 'a']
    """
    order = {d: i for i, d in enumerate(scores)}
    return sorted(scores, key=lambda d: (-scores[d], order[d]))


def score_query(name: str, judged: Mapping[str, int], ids: Sequence[str]) -> float:
    """One query's ``name`` metric for the ranked ``ids`` under the judgments ``judged``.

    >>> judged = {"d1": 2, "d2": 1, "d3": 0}
    >>> score_query("mrr@10", judged, ["d3", "d2", "d1"])   # first relevant at rank 2
    0.5
    >>> score_query("recall@1", judged, ["d1", "d2"])       # 1 of 2 relevant
    0.5
    >>> score_query("map@10", judged, ["d1", "x", "d2"])    # (1/1 + 2/3) / 2
    0.8333333333333333
    >>> round(score_query("ndcg@10", judged, ["d2", "d1"]), 4)   # (1 + 2/log2 3) / (2 + 1/log2 3)
    0.8597
    """
    parsed = _parse(name)
    if parsed is None:
        raise ValueError(f"metric {name!r} is not computed here (see supported())")
    metric, k = parsed
    relevant = {d: r for d, r in judged.items() if r >= 1}
    if not relevant:
        return 0.0
    return _METRICS[metric](relevant, list(ids[:k] if k else ids), k)


def _mrr(relevant: Mapping[str, int], top: Sequence[str], k: int | None) -> float:
    return next((1.0 / i for i, d in enumerate(top, start=1) if d in relevant), 0.0)


def _recall(relevant: Mapping[str, int], top: Sequence[str], k: int | None) -> float:
    return sum(d in relevant for d in top) / len(relevant)


def _map(relevant: Mapping[str, int], top: Sequence[str], k: int | None) -> float:
    found, total = 0, 0.0
    for i, d in enumerate(top, start=1):
        if d in relevant:
            found += 1
            total += found / i
    return total / len(relevant)


def _ndcg(relevant: Mapping[str, int], top: Sequence[str], k: int | None) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(i + 1) for i, d in enumerate(top, start=1))
    ideal_gains = sorted(relevant.values(), reverse=True)[: k or None]
    idcg = sum(r / math.log2(i + 1) for i, r in enumerate(ideal_gains, start=1))
    return dcg / idcg


#: each metric of one query: (judged relevant documents and grades, the ranked top, k)
_METRICS: dict[str, Callable[[Mapping[str, int], Sequence[str], int | None], float]] = {
    "mrr": _mrr,
    "recall": _recall,
    "map": _map,
    "ndcg": _ndcg,
}


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
) -> dict[str, float]:
    """The mean of each metric over the judged queries of ``qrels``.

    >>> qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
    >>> evaluate(qrels, {"q1": {"d1": 0.2, "d2": 0.8}}, ["mrr@10", "recall@1"])
    {'mrr@10': 0.25, 'recall@1': 0.0}
    """
    orders = {q: ranked(run.get(q, {})) for q in qrels}
    out: dict[str, float] = {}
    for name in metrics:
        values = [score_query(name, qrels[q], orders[q]) for q in qrels]
        out[name] = math.fsum(values) / len(values) if values else 0.0
    return out
