"""Score normalisation and fusion: pure functions over lists of floats (one list per signal).

Every function keeps positions aligned: output ``i`` belongs to input ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["best_first", "minmax", "ranks", "rrf", "weighted_sum", "zscore"]


def minmax(values: Sequence[float]) -> list[float]:
    """Scale to [0, 1]; a constant signal (no information) becomes all 0.5.

    >>> minmax([2.0, 4.0, 3.0])
    [0.0, 1.0, 0.5]
    >>> minmax([7.0, 7.0])
    [0.5, 0.5]
    """
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.5] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def zscore(values: Sequence[float]) -> list[float]:
    """Centre and scale by the (population) standard deviation; a constant signal becomes all 0.

    >>> zscore([1.0, 2.0, 3.0])
    [-1.224744871391589, 0.0, 1.224744871391589]
    >>> zscore([2.2e-309, 0.0]), zscore([-1e-200, 0.0]), zscore([1e308, -1e308])
    ([1.0, -1.0], [-1.0, 1.0], [1.0, -1.0])
    """
    if not values:
        return []
    if all(v == values[0] for v in values):
        return [0.0] * len(values)
    # z-scores do not change when every value is scaled or shifted: scaled by a power of two
    # (exact) to at most 1 in magnitude, so that values 1e-300 apart neither underflow into a
    # "constant" signal nor huge ones overflow; then shifted by the first value, so that the mean
    # is taken of the differences (exact for close values) and keeps their precision
    exponent = math.frexp(max(abs(v) for v in values))[1]
    unit = [math.ldexp(v, -exponent) for v in values]  # per value: 2**-exponent alone may overflow
    shifted = [u - unit[0] for u in unit]
    mean = math.fsum(shifted) / len(shifted)
    deviations = [d - mean for d in shifted]
    sd = math.sqrt(math.fsum(d * d for d in deviations) / len(deviations))
    if sd == 0:
        return [0.0] * len(values)
    return [d / sd for d in deviations]


def best_first(values: Sequence[float]) -> list[int]:
    """Indices of ``values`` from the largest value to the smallest; equal values keep their
    order (a stable sort): the one order every scorer's ranking follows.

    >>> best_first([0.2, 0.9, 0.2, 0.5])
    [1, 3, 0, 2]
    """
    return sorted(range(len(values)), key=lambda i: -values[i])


def ranks(values: Sequence[float]) -> list[int]:
    """1-based rank of each value, best (largest) first; ties ranked by position (stable).

    >>> ranks([0.2, 0.9, 0.2, 0.5])
    [3, 1, 4, 2]
    """
    order = best_first(values)
    out = [0] * len(values)
    for r, i in enumerate(order, start=1):
        out[i] = r
    return out


def rrf(signals: Sequence[Sequence[float]], weights: Sequence[float], k: float = 60.0) -> list[float]:
    """Weighted reciprocal rank fusion: ``sum_s w_s / (k + rank_s(i))``.

    >>> [round(x, 5) for x in rrf([[3.0, 1.0], [1.0, 3.0]], [1.0, 1.0], k=1)]
    [0.83333, 0.83333]
    """
    n = len(signals[0]) if signals else 0
    out = [0.0] * n
    for values, w in zip(signals, weights, strict=True):
        for i, r in enumerate(ranks(values)):
            out[i] += w / (k + r)
    return out


def weighted_sum(signals: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """``sum_s w_s * signal_s(i)`` (normalise the signals first).

    >>> weighted_sum([[1.0, 0.0], [0.0, 1.0]], [0.75, 0.25])
    [0.75, 0.25]
    """
    n = len(signals[0]) if signals else 0
    out = [0.0] * n
    for values, w in zip(signals, weights, strict=True):
        for i, v in enumerate(values):
            out[i] += w * v
    return out
