"""Calibration: map raw scores to probabilities that match observed relevance rates.

Platt scaling fits ``p = sigmoid(a * s + b)``; temperature scaling fits ``p = sigmoid(s / T)``.
Both minimise the log-loss on labelled (score, label) pairs by Newton's method; pure functions over
lists of floats (no numpy needed). :func:`expected_calibration_error` measures the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rerankers_plugins.errors import ConfigError

__all__ = ["expected_calibration_error", "fit_platt", "fit_temperature", "sigmoid"]


def sigmoid(x: float) -> float:
    """Numerically stable logistic function.

    >>> sigmoid(0.0), round(sigmoid(2.0), 4), round(sigmoid(-800.0), 4)
    (0.5, 0.8808, 0.0)
    """
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _check(scores: Sequence[float], labels: Sequence[int]) -> None:
    if len(scores) != len(labels):
        raise ConfigError(f"{len(scores)} scores for {len(labels)} labels")
    if not scores:
        raise ConfigError("calibration needs labelled pairs, got none")
    values = set(labels)
    if not values <= {0, 1}:
        raise ConfigError(f"labels must be 0 or 1, got {sorted(values)[:5]}")
    if len(values) < 2:
        raise ConfigError(
            f"calibration needs both relevant (1) and non-relevant (0) pairs; all labels are {labels[0]}"
        )


def _log_loss(z: Sequence[float], labels: Sequence[int]) -> float:
    """Sum of ``log(1 + e^z) - y z`` (the logistic log-loss), computed stably."""
    return sum((max(v, 0.0) + math.log1p(math.exp(-abs(v)))) - y * v for v, y in zip(z, labels, strict=True))


def fit_platt(
    scores: Sequence[float], labels: Sequence[int], iters: int = 100, l2: float = 1e-6
) -> tuple[float, float]:
    """``(a, b)`` minimising the log-loss of ``sigmoid(a * s + b)`` (Newton's method, tiny L2).

    Hand check: scores -1 / +1 labelled 0 / 1 three times out of four each way give
    ``sigmoid(a + b) = 0.75``, so ``a = ln 3 ~ 1.0986`` and ``b = 0``.

        >>> a, b = fit_platt([-1, -1, -1, -1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0])
        >>> round(a, 3), abs(round(b, 3))
        (1.099, 0.0)
    """
    _check(scores, labels)
    a, b = 0.0, 0.0

    def loss(a: float, b: float) -> float:
        return _log_loss([a * s + b for s in scores], labels) + 0.5 * l2 * a * a

    for _ in range(iters):
        ga = gb = haa = hab = hbb = 0.0
        for s, y in zip(scores, labels, strict=True):
            p = sigmoid(a * s + b)
            r = p - y
            w = p * (1 - p)
            ga += r * s
            gb += r
            haa += w * s * s
            hab += w * s
            hbb += w
        ga += l2 * a
        haa += l2
        hbb += l2
        det = haa * hbb - hab * hab
        if det <= 1e-18:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        current, t = loss(a, b), 1.0
        while t > 1e-8 and loss(a - t * da, b - t * db) > current:  # backtrack: never go uphill
            t /= 2
        a, b = a - t * da, b - t * db
        if abs(t * da) < 1e-10 and abs(t * db) < 1e-10:
            break
    return a, b


def fit_temperature(scores: Sequence[float], labels: Sequence[int], iters: int = 100) -> float:
    """``T > 0`` minimising the log-loss of ``sigmoid(s / T)`` (Newton's method on ``1 / T``).

    >>> round(fit_temperature([-2, -2, -2, -2, 2, 2, 2, 2], [0, 0, 0, 1, 1, 1, 1, 0]), 3)
    1.82
    """
    _check(scores, labels)
    inv = 1.0
    for _ in range(iters):
        g = h = 0.0
        for s, y in zip(scores, labels, strict=True):
            p = sigmoid(inv * s)
            g += (p - y) * s
            h += p * (1 - p) * s * s
        if h <= 1e-18:
            break
        step, current = g / h, _log_loss([inv * s for s in scores], labels)
        while abs(step) > 1e-12 and (
            inv - step <= 0 or _log_loss([(inv - step) * s for s in scores], labels) > current
        ):
            step /= 2  # backtrack: stay positive, never go uphill
        inv -= step
        if abs(step) < 1e-10:
            break
    return 1.0 / inv


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE: the bin-weighted mean of ``|accuracy - confidence|`` over ``bins`` equal-width bins.

    >>> expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0])
    0.1
    """
    if len(probs) != len(labels) or not probs:
        raise ConfigError("expected_calibration_error needs equally many probabilities and labels")
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(probs) if (lo <= p < hi) or (b == bins - 1 and p == 1.0)]
        if idx:
            conf = sum(probs[i] for i in idx) / len(idx)
            acc = sum(labels[i] for i in idx) / len(idx)
            total += len(idx) / len(probs) * abs(acc - conf)
    return round(total, 12)
