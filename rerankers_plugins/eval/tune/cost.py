"""``tune``'s latency model: timed calls in, a per-query latency prediction for any configuration out.

A configuration's latency for one query is the pipeline's own work (building and cutting the
ranking, fusion, the cascade's bookkeeping: :class:`Overhead`, fitted per configuration kind from
timed ``rerank`` calls whose leaves answer from the score table at no cost) plus each of its leaf
calls (:class:`LeafCost`, fitted per scorer from timed calls on fresh queries at the sizes the
configurations use). Both are linear with non-negative coefficients, fitted on relative error:

    leaf ms     = a + b * pairs + c * sum(min(words of a text, cap))     (cap chosen by the fit)
    overhead ms = a + b * candidates handed to rerank + c * pairs its leaves score

so predictions grow with depth and length, never shrink. The noise of a call around the model is
kept as the measured / predicted ratios of the fit (:attr:`LeafCost.ratios`): a configuration's
percentile over queries is read off every query's prediction times every ratio.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = ["LeafCost", "Overhead", "fit_nonnegative", "timed"]

#: word caps the leaf fit tries (a model reads at most its window: longer texts cost the same)
CAPS: tuple[int | None, ...] = (32, 64, 128, 192, 256, 384, 512, None)


def timed(calls: Sequence[Callable[[], object]], concurrency: int = 1) -> list[float]:
    """Milliseconds each call took, in order, with ``concurrency`` calls in flight at a time (one
    thread each): the latency a request sees when that many run together."""

    def one(call: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1000.0

    if concurrency <= 1:
        return [one(c) for c in calls]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, calls))


def fit_nonnegative(rows: Sequence[Sequence[float]], y: Sequence[float]) -> tuple[list[float], float]:
    """Coefficients ``>= 0`` minimising the squared relative error ``sum(((x . c) - y) / y)^2``, and
    that error: every subset of the columns is solved by least squares and the best feasible one
    kept (exact non-negative least squares for the few columns used here).

    >>> coef, err = fit_nonnegative([[1, 10], [1, 20], [1, 40]], [3.0, 5.0, 9.0])
    >>> [round(c, 6) for c in coef], round(err, 9)
    ([1.0, 0.2], 0.0)
    """
    np = require("numpy", "eval")
    x = np.asarray(rows, dtype=float)
    target = np.asarray(y, dtype=float)
    if len(target) == 0 or np.any(target <= 0):
        raise ConfigError("a cost model needs positive timings")
    w = 1.0 / target
    xw, yw = x * w[:, None], target * w
    cols = x.shape[1]
    best: tuple[list[float], float] | None = None
    for size in range(1, cols + 1):
        for subset in itertools.combinations(range(cols), size):
            sol, *_ = np.linalg.lstsq(xw[:, subset], yw, rcond=None)
            if np.any(sol < 0):
                continue
            coef = [0.0] * cols
            for j, v in zip(subset, sol.tolist(), strict=True):
                coef[j] = float(v)
            err = float(((xw @ np.asarray(coef) - yw) ** 2).sum())
            if best is None or err < best[1] - 1e-12:
                best = (coef, err)
    assert best is not None  # a single non-negative column always solves: y > 0
    return best


def _capped(words: Sequence[int], cap: int | None) -> int:
    return sum(words) if cap is None else sum(min(w, cap) for w in words)


@dataclass(frozen=True)
class LeafCost:
    """One scorer's call: ``a + b * pairs + c * capped words`` milliseconds."""

    a: float
    b: float
    c: float
    cap: int | None
    #: measured / predicted of every timed call: the noise around the model
    ratios: tuple[float, ...]
    samples: int

    @classmethod
    def fit(cls, samples: Sequence[tuple[Sequence[int], float]]) -> LeafCost:
        """Fit on ``(words of each text of a call, ms)`` samples."""
        if len(samples) < 3:
            raise ConfigError(f"a scorer's cost model needs at least 3 timed calls, got {len(samples)}")
        ms = [t for _, t in samples]
        best: tuple[float, int | None, list[float]] | None = None
        for cap in CAPS:
            rows = [[1.0, float(len(words)), float(_capped(words, cap))] for words, _ in samples]
            coef, err = fit_nonnegative(rows, ms)
            if best is None or err < best[0] - 1e-12:
                best = (err, cap, coef)
        assert best is not None
        _, cap, (a, b, c) = best
        model = cls(a, b, c, cap, (), len(samples))
        ratios = tuple(t / max(model.predict(words), 1e-9) for words, t in samples)
        return cls(a, b, c, cap, ratios, len(samples))

    def predict(self, words: Sequence[int]) -> float:
        """Milliseconds of a call on texts of ``words`` words each."""
        return self.a + self.b * len(words) + self.c * _capped(words, self.cap)

    @property
    def per_pair_ms(self) -> float:
        """A typical pair's cost (100 words), for ordering scorers from cheap to costly."""
        return self.b + self.c * (100 if self.cap is None else min(100, self.cap))


@dataclass(frozen=True)
class Overhead:
    """The pipeline's own milliseconds for a configuration kind: ``a + b * candidates + c * pairs``."""

    a: float
    b: float
    c: float
    ratios: tuple[float, ...]

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]]) -> Overhead:
        """Fit on ``(candidates handed to rerank, pairs scored by its leaves, ms)`` samples."""
        if len(samples) < 3:
            raise ConfigError(f"the pipeline's cost model needs at least 3 timed calls, got {len(samples)}")
        coef, _ = fit_nonnegative(
            [[1.0, float(n), float(p)] for n, p, _ in samples], [t for _, _, t in samples]
        )
        model = cls(coef[0], coef[1], coef[2], ())
        ratios = tuple(t / max(model.predict(n, p), 1e-9) for n, p, t in samples)
        return cls(coef[0], coef[1], coef[2], ratios)

    def predict(self, candidates: int, pairs: int) -> float:
        return self.a + self.b * candidates + self.c * pairs


def mixture_percentile(predictions: Sequence[float], ratios: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of latency when a query predicted at ``x`` ms takes ``x * r`` for a
    ratio ``r`` drawn from ``ratios`` (the fit's noise): over every query and every ratio."""
    if not predictions:
        return 0.0
    np = require("numpy", "eval")
    ratio = np.asarray(ratios if ratios else [1.0], dtype=float)
    values = np.outer(np.asarray(predictions, dtype=float), ratio).ravel()
    return float(np.percentile(values, p))
