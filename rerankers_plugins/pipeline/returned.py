"""The checks of what a leaf returns, before anything of it enters a :class:`Ranking`.

A backend's answer is untrusted: a list, tuple, iterator, numpy array or torch tensor is read as a
list; anything else (None, a scalar, a string, a mapping, a set), a wrong length, a non-numeric or
non-finite score, a score off the declared scale or a broken permutation is a BackendError naming
the backend, so that ``on_error="keep_order"`` applies to a malformed answer as to a failure.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any

from rerankers_plugins.errors import BackendError
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import ScoreScale

__all__ = ["SCALE_TOLERANCE", "as_list", "check_permutation", "check_result", "check_values", "encodable"]

logger = logging.getLogger(__name__)

#: how far outside its declared scale a score may fall by float error before it is an error
SCALE_TOLERANCE = 1e-3


def as_list(raw: Any, who: str, wanted: str) -> list[Any]:
    """A backend's answer as a list: a list or tuple, an iterator or generator, or a 1-D numpy
    array or torch tensor (read with ``tolist()``, on any device). BackendError naming ``who`` for
    anything else: None, a scalar, a string or bytes, a mapping or a set (no order), a 0-d array."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if raw is None or isinstance(raw, str | bytes | bytearray | Mapping | AbstractSet):
        raise BackendError(f"{who} returned {type(raw).__name__} ({raw!r:.60}), not {wanted}")
    tolist = getattr(raw, "tolist", None)  # numpy and torch arrays: a value, not a backend
    if callable(tolist):
        try:
            out = tolist()
        except Exception as exc:
            raise BackendError(f"{who} returned {type(raw).__name__}, not {wanted}: {exc}") from exc
        if isinstance(out, list):
            return out
        raise BackendError(f"{who} returned a single {type(raw).__name__} ({out!r:.60}), not {wanted}")
    try:
        iterator = iter(raw)
    except TypeError:
        raise BackendError(f"{who} returned {type(raw).__name__} ({raw!r:.60}), not {wanted}") from None
    return list(iterator)


def _check_numeric(values: list[Any], name: str) -> None:
    bad_type = [i for i, s in enumerate(values) if isinstance(s, bool) or not isinstance(s, numbers.Real)]
    if bad_type:
        i = bad_type[0]
        raise BackendError(
            f"scorer {name!r} returned a non-numeric score {values[i]!r:.60} ({type(values[i]).__name__}) "
            f"at position {i}"
        )


def _as_floats(values: list[Any], n: int, name: str) -> list[float]:
    """``values`` as ``n`` finite floats; BackendError naming the scorer otherwise."""
    _check_numeric(values, name)
    if len(values) != n:
        raise BackendError(
            f"scorer {name!r} returned {len(values)} scores for {n} texts; "
            "a scorer must return exactly one score per text, in input order"
        )
    scores: list[float] = []
    for s in values:
        try:
            scores.append(float(s))
        except OverflowError:  # an int beyond float range
            scores.append(math.inf)
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise BackendError(f"scorer {name!r} returned non-finite scores (NaN or inf) at positions {bad[:10]}")
    return scores


def _on_scale(scores: list[float], name: str, scale: ScoreScale) -> list[float]:
    """``scores`` inside ``scale``'s range (float error within the tolerance clamped); BackendError
    naming the scorer for a score beyond it."""
    bounds = scale.bounds
    if bounds is None:
        return scores
    lo, hi = bounds
    off = [i for i, s in enumerate(scores) if not lo - SCALE_TOLERANCE <= s <= hi + SCALE_TOLERANCE]
    if off:
        raise BackendError(
            f"scorer {name!r} returned {scores[off[0]]} at position {off[0]}, outside its declared "
            f"{scale.value} scale [{lo}, {hi}]"
        )
    return [min(max(s, lo), hi) for s in scores]


def check_values(raw: Any, n: int, name: str, scale: ScoreScale) -> list[float]:
    """A scorer's answer as ``n`` finite floats on its declared ``scale``."""
    values = as_list(raw, f"scorer {name!r}", "a list of scores")
    return _on_scale(_as_floats(values, n, name), name, scale)


def check_permutation(raw: Any, n: int, name: str) -> list[int]:
    """A ranker's answer as a permutation of ``range(n)``."""
    order = as_list(raw, f"ranker {name!r}", f"a permutation of range({n})")
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in order) or sorted(
        int(i) for i in order
    ) != list(range(n)):
        raise BackendError(f"ranker {name!r} returned {order[:20]!r:.200}, not a permutation of range({n})")
    return [int(i) for i in order]


def check_result(result: Any, n: int, who: str) -> ScoreResult:
    """A detailed method's answer checked as a :class:`ScoreResult`: ``info`` a mapping, ``per_item``
    None or one mapping per text (``per_item`` returned as a list). BackendError naming ``who``."""
    if not isinstance(result, ScoreResult):
        raise BackendError(f"{who} returned {type(result).__name__} ({result!r:.60}), not a ScoreResult")
    if not isinstance(result.info, Mapping):
        raise BackendError(f"{who} returned info of type {type(result.info).__name__}, not a mapping")
    if result.per_item is None:
        return result
    per = as_list(result.per_item, f"{who} (per_item)", "a list of detail mappings")
    if len(per) != n:
        raise BackendError(f"{who} returned {len(per)} detail entries for {n} texts")
    if not all(isinstance(d, Mapping) for d in per):
        raise BackendError(f"{who} returned per_item entries that are not mappings")
    return replace(result, per_item=per)


_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(name: str, query: str, texts: list[str]) -> tuple[str, list[str]]:
    """Query and texts a model or an HTTP body can take: lone surrogates (text decoded badly
    upstream, which tokenizers and UTF-8 encoders reject) become U+FFFD, logged once per call.
    The candidates themselves are returned unchanged."""
    if not _SURROGATE.search(query) and not any(_SURROGATE.search(t) for t in texts):
        return query, texts
    logger.warning("%s: lone surrogates in the query or texts were replaced by U+FFFD for scoring", name)
    return _SURROGATE.sub("\ufffd", query), [_SURROGATE.sub("\ufffd", t) for t in texts]
