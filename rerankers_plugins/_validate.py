"""One validator per kind of option value, shared by the scorers, the strategies, rerank and the
adapters: each returns the value in its canonical type or raises ConfigError naming the option."""

from __future__ import annotations

import math
import numbers
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import ScoreScale

__all__ = ["as_int", "as_real", "check_threshold", "check_top_n"]


def as_int(value: Any, what: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int (numpy integers too); ConfigError naming ``what`` otherwise.

    >>> as_int(3, "batch_size", minimum=1)
    3
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        none = " or None" if allow_none else ""
        raise ConfigError(f"{what} must be an int{none}, got {value!r}")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {out}")
    return out


def as_real(value: Any, what: str, *, allow_none: bool = False, positive: bool = False) -> float | None:
    """``value`` as a float that is not NaN (numpy floats too); with ``positive``, finite and > 0
    (timeouts, deadlines, temperatures); ConfigError naming ``what`` otherwise.

    >>> as_real(2, "timeout", positive=True)
    2.0
    """
    if value is None and allow_none:
        return None
    none = " or None" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        kind = "a positive number" if positive else "a number"
        raise ConfigError(f"{what} must be {kind}{none}, got {value!r}")
    out = float(value)
    if positive and not (0 < out < math.inf):
        raise ConfigError(f"{what} must be a positive finite number{none}, got {value!r}")
    return out


def check_top_n(top_n: Any) -> int | None:
    """``top_n`` as an int >= 1, or None (keep all)."""
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, numbers.Integral):
        raise ConfigError(f"top_n must be a positive int or None, got {top_n!r}")
    if int(top_n) <= 0:
        raise ConfigError(f"top_n must be >= 1 (or None for all), got {top_n}")
    return int(top_n)


def check_threshold(scale: ScoreScale, threshold: Any, *, who: str = "scorer") -> float | None:
    """``threshold`` as a float inside ``scale``'s range, or None; ConfigError otherwise."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ConfigError(f"threshold must be a number, got {type(threshold).__name__}")
    value = float(threshold)
    if math.isnan(value):
        raise ConfigError("threshold is NaN")
    bounds = scale.bounds
    if bounds is None:
        raise ConfigError(
            f"{who} has scale RANK_ONLY (an order, not scores): a threshold cannot apply; use top_n"
        )
    lo, hi = bounds
    if not (lo <= value <= hi) or math.isinf(value):
        raise ConfigError(f"threshold {value} is outside the {scale.value} scale of {who} ([{lo}, {hi}])")
    return value
