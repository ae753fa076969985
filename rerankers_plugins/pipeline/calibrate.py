"""Calibration of any scorer on labelled pairs, so that a threshold of 0.7 means ~70 % precision."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.calibration import expected_calibration_error, fit_platt, fit_temperature, sigmoid
from rerankers_plugins.pipeline.leaves import ScorerLeaf, as_scorer_leaf
from rerankers_plugins.scorers.base import BaseScorer, Scorer, ScoreResult
from rerankers_plugins.types import ScoreScale

__all__ = ["Calibrated", "calibrate"]

logger = logging.getLogger(__name__)

_EPS = 1e-6


def _to_logit(value: float, scale: ScoreScale) -> float:
    """Put a score on the logit axis: probabilities through logit, similarities stretched, logits as is."""
    if scale in (ScoreScale.PROBABILITY, ScoreScale.RELEVANCE):
        p = min(max(value, _EPS), 1 - _EPS)
        return math.log(p / (1 - p))
    return value


def _as_probability(value: float, scale: ScoreScale) -> float:
    """What a user would read the raw score as (for the 'before' reliability figure)."""
    if scale in (ScoreScale.PROBABILITY, ScoreScale.RELEVANCE):
        return min(max(value, 0.0), 1.0)
    if scale is ScoreScale.SIMILARITY:
        return (min(max(value, -1.0), 1.0) + 1) / 2
    return sigmoid(value)


class Calibrated(BaseScorer):
    """``scorer`` with its scores mapped to calibrated probabilities (scale PROBABILITY).

    A leaf scorer itself (a monotone map of a leaf's scores): strategies go around it, and it
    can be cached.

    ``params`` holds the fitted mapping; ``report`` the fit's ECE before and after, pairs and
    positives. :meth:`save` / :meth:`load` keep the parameters in a small JSON file.
    """

    scale = ScoreScale.PROBABILITY

    def __init__(
        self,
        scorer: Scorer,
        method: Literal["platt", "temperature"],
        params: dict[str, float],
        report: dict[str, Any] | None = None,
    ) -> None:
        self._leaf = as_scorer_leaf(scorer, "Calibrated")
        self.scorer = scorer
        self.inner_scale = self._leaf.scale
        self.method = method
        self.params = dict(params)
        self.report = dict(report or {})
        self.pure = self._leaf.pure
        self.on_error = self._leaf.on_error
        # the wrapped scorer's template: the leaf around this one renders, the texts arrive filled
        self.document_template = self._leaf.template
        self.name = f"calibrated({self._leaf.name})"

    def fingerprint(self) -> Mapping[str, Any]:
        return {**self._leaf.fingerprint(), "calibration": [self.method, sorted(self.params.items())]}

    def transform(self, raw: float) -> float:
        x = _to_logit(raw, self.inner_scale)
        if self.method == "platt":
            return sigmoid(self.params["a"] * x + self.params["b"])
        return sigmoid(x / self.params["temperature"])

    def _map(self, result: ScoreResult) -> ScoreResult:
        return ScoreResult(
            values=[self.transform(v) for v in result.values], info=result.info, per_item=result.per_item
        )

    def score_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        return self._map(self._leaf.score_texts(query, list(texts)))

    async def ascore_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        return self._map(await self._leaf.ascore_texts(query, list(texts)))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.score_details(query, texts).values)

    def save(self, path: str | Path) -> None:
        data = {
            "scorer": self._leaf.name,
            "scale": self.inner_scale.value,
            "method": self.method,
            "params": self.params,
            "report": self.report,
        }
        Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, scorer: Scorer) -> Calibrated:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        leaf = as_scorer_leaf(scorer, "Calibrated")
        if data.get("scorer") != leaf.name:
            logger.warning(
                "calibration in %s was fitted for %r, applied to %r", path, data.get("scorer"), leaf.name
            )
        if data.get("scale") != leaf.scale.value:
            raise ConfigError(
                f"calibration in {path} was fitted on a {data.get('scale')} scorer, not {leaf.name!r}"
            )
        return cls(scorer, data["method"], data["params"], data.get("report"))


def _raw_scores(leaf: ScorerLeaf, pairs: Sequence[tuple[str, str, int]]) -> list[float]:
    """The leaf's score of every pair, scored one query at a time."""
    by_query: dict[str, list[int]] = {}
    for i, (q, _, _) in enumerate(pairs):
        by_query.setdefault(q, []).append(i)
    raw = [0.0] * len(pairs)
    for q, idx in by_query.items():
        values = leaf.score_texts(q, [pairs[i][1] for i in idx]).values
        for i, v in zip(idx, values, strict=True):
            raw[i] = v
    return raw


def calibrate(
    scorer: Scorer,
    pairs: Sequence[tuple[str, str, int]],
    *,
    method: Literal["platt", "temperature"] = "platt",
    bins: int = 10,
) -> Calibrated:
    """Fit ``method`` on ``(query, text, label)`` pairs (label 1 relevant, 0 not) and return the
    calibrated scorer. Pairs are scored one query at a time. Needs both labels (ConfigError
    otherwise). ``report`` gives the expected calibration error before and after, on these pairs:
    fit on training data (e.g. SciFact's train qrels), judge on held-out data."""
    leaf = as_scorer_leaf(scorer, "calibrate")
    scale = leaf.scale
    if method not in ("platt", "temperature"):
        raise ConfigError(f"method must be 'platt' or 'temperature', got {method!r}")
    labels = [int(y) for _, _, y in pairs]
    if not pairs or len(set(labels)) < 2 or not set(labels) <= {0, 1}:
        found = sorted(set(labels))
        raise ConfigError(
            f"calibrate needs pairs labelled 1 (relevant) and 0 (not relevant); found labels {found}"
        )
    raw = _raw_scores(leaf, pairs)
    x = [_to_logit(v, scale) for v in raw]
    if method == "platt":
        a, b = fit_platt(x, labels)
        params = {"a": a, "b": b}
    else:
        params = {"temperature": fit_temperature(x, labels)}
    result = Calibrated(scorer, method, params)
    before = expected_calibration_error([_as_probability(v, scale) for v in raw], labels, bins)
    after = expected_calibration_error([result.transform(v) for v in raw], labels, bins)
    result.report = {"pairs": len(pairs), "positives": sum(labels), "ece_before": before, "ece_after": after}
    logger.info(
        "calibrated %s (%s): ECE %.4f -> %.4f on %d pairs",
        leaf.name,
        method,
        before,
        after,
        len(pairs),
    )
    return result
