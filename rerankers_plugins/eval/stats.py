"""Query-level statistics for choosing on one split and reporting on another: seeded splits,
bootstrap confidence intervals and paired tests over per-query values (NDCG@10 of each query).

Everything here is a pure function of its inputs and ``seed`` (numpy's PCG64): the same seed gives
the same split, interval and p-value.

- :func:`bootstrap_ci`: the percentile bootstrap (Efron and Tibshirani, 1993, ch. 13) of the mean:
  resample the queries with replacement ``resamples`` times, take the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` quantiles of the resampled means.
- :func:`paired_intervals`: the same interval for the per-query differences between one system and
  each of many, resampling the same queries for all (what ``tune`` reads to tell which
  configurations are as good as the best: NDCG varies far more between queries than between
  systems on one query, so only a paired interval can tell a real loss from a hard query).
- :func:`paired_test`: the mean per-query difference ``a - b``, its paired bootstrap interval, and
  the two-sided p-value of a paired randomization (sign-flip) test: under the null hypothesis that
  the two systems are exchangeable on every query, each difference's sign is a coin flip (Smucker,
  Allan and Carterette, "A comparison of statistical significance tests for information retrieval
  evaluation", CIKM 2007). The p-value counts the observed statistic itself, so it is never 0.
- :func:`split_queries` and :func:`folds`: a seeded dev / test split and k folds of query ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = [
    "PairedTest",
    "bootstrap_ci",
    "folds",
    "mean",
    "paired_intervals",
    "paired_test",
    "percentile",
    "split_queries",
]


def mean(values: Sequence[float]) -> float:
    """The mean (0.0 for no values), summed exactly.

    >>> mean([0.5, 1.0, 0.0])
    0.5
    """
    return math.fsum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) with linear interpolation between order statistics
    (numpy's default), the one definition used for predicted and measured latencies alike.

    >>> percentile([10.0, 20.0, 30.0, 40.0], 50)
    25.0
    """
    if not values:
        return 0.0
    np = require("numpy", "eval")
    return float(np.percentile(np.asarray(values, dtype=float), p))


def bootstrap_ci(
    values: Sequence[float], *, seed: int = 0, level: float = 0.95, resamples: int = 2000
) -> tuple[float, float]:
    """The percentile-bootstrap ``level`` interval of the mean of ``values`` (one per query).

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> low, high = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    >>> 0.38 < low < 0.5 < high < 0.62
    True
    """
    if not values:
        raise ConfigError("a confidence interval needs at least one query")
    np = require("numpy", "eval")
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(resamples, len(data)))
    means = data[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over the same queries: the mean difference, its bootstrap interval and the
    two-sided randomization p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    queries: int

    def __str__(self) -> str:
        return f"{self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}], p = {self.p_value:.3g}"


def paired_test(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, level: float = 0.95, resamples: int = 10000
) -> PairedTest:
    """Compare two systems query by query (``a[i]`` and ``b[i]`` are the same query's values).

    >>> t = paired_test([0.5, 0.6, 0.7, 0.8] * 10, [0.4, 0.5, 0.6, 0.7] * 10)
    >>> round(t.difference, 3), t.p_value < 0.001
    (0.1, True)
    >>> paired_test([0.3, 0.2], [0.3, 0.2]).p_value
    1.0
    """
    if len(a) != len(b):
        raise ConfigError(f"a paired test needs the same queries on both sides ({len(a)} vs {len(b)})")
    if not a:
        raise ConfigError("a paired test needs at least one query")
    np = require("numpy", "eval")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = abs(float(diffs.mean()))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, len(diffs)))
    flipped = np.abs((signs * diffs).mean(axis=1))
    # the observed statistic counts as one of the permutations; a tolerance keeps exact ties ties
    extreme = int((flipped >= observed - 1e-12).sum())
    p_value = (extreme + 1) / (resamples + 1)
    low, high = bootstrap_ci(diffs.tolist(), seed=seed, level=level)
    return PairedTest(float(diffs.mean()), low, high, min(1.0, p_value), len(diffs))


def paired_intervals(
    reference: Sequence[float],
    others: Mapping[str, Sequence[float]],
    *,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = 2000,
) -> dict[str, tuple[float, float]]:
    """For each of ``others``, the paired percentile-bootstrap ``level`` interval of the mean
    per-query difference ``reference - other`` (the same resampled queries for all: common random
    numbers). An interval that holds 0: the other is not significantly worse than the reference.

    >>> ref = [0.5, 0.7, 0.9, 0.4] * 25
    >>> out = paired_intervals(ref, {"same": ref, "worse": [v - 0.1 for v in ref]})
    >>> out["same"], [round(v, 6) for v in out["worse"]]
    ((0.0, 0.0), [0.1, 0.1])
    """
    np = require("numpy", "eval")
    base = np.asarray(reference, dtype=float)
    if len(base) == 0:
        raise ConfigError("a paired interval needs at least one query")
    idx = np.random.default_rng(seed).integers(0, len(base), size=(resamples, len(base)))
    tail = (1.0 - level) / 2.0
    out = {}
    for name, values in others.items():
        diffs = base - np.asarray(values, dtype=float)
        low, high = np.quantile(diffs[idx].mean(axis=1), [tail, 1.0 - tail])
        out[name] = (float(low), float(high))
    return out


def split_queries(
    qids: Sequence[str], *, seed: int, dev_fraction: float = 0.5
) -> tuple[list[str], list[str]]:
    """``qids`` split at random (seeded) into dev and test, each returned sorted.

    >>> dev, test = split_queries([f"q{i}" for i in range(10)], seed=0)
    >>> len(dev), len(test), sorted(dev + test) == sorted(f"q{i}" for i in range(10))
    (5, 5, True)
    """
    if not 0 < dev_fraction < 1:
        raise ConfigError(f"dev_fraction must be between 0 and 1, got {dev_fraction!r}")
    np = require("numpy", "eval")
    ordered = sorted(qids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_dev = max(1, min(len(ordered) - 1, round(dev_fraction * len(ordered))))
    dev = sorted(ordered[i] for i in perm[:n_dev])
    test = sorted(ordered[i] for i in perm[n_dev:])
    return dev, test


def folds(qids: Sequence[str], *, k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``k`` folds of ``qids`` (seeded): each ``(dev, test)`` holds one fold out as test and the
    rest as dev; every query is a test query exactly once.

    >>> fs = folds([f"q{i}" for i in range(10)], k=5, seed=0)
    >>> [len(t) for _, t in fs], sorted(q for _, t in fs for q in t) == sorted(f"q{i}" for i in range(10))
    ([2, 2, 2, 2, 2], True)
    """
    if k < 2 or k > len(qids):
        raise ConfigError(f"k-fold needs 2 <= k <= {len(qids)} queries, got k={k}")
    np = require("numpy", "eval")
    ordered = sorted(qids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    parts = [sorted(ordered[i] for i in perm[j::k]) for j in range(k)]
    return [(sorted(q for m, part in enumerate(parts) if m != j for q in part), parts[j]) for j in range(k)]
