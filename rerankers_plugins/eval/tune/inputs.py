"""What ``tune`` is given, checked once: the budget, the percentile, the candidate scorers and the
queries that choose (dev) and report (test)."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins._validate import as_real
from rerankers_plugins.errors import ConfigError, RerankError
from rerankers_plugins.eval import stats
from rerankers_plugins.eval.beir import BeirData, load_beir, read_qrels, read_queries
from rerankers_plugins.eval.tune.space import RETRIEVAL
from rerankers_plugins.pipeline.leaves import RankerLeaf, ScorerLeaf, ScorerLike, as_strategy
from rerankers_plugins.pipeline.ranking import Strategy
from rerankers_plugins.spec import Spec, build_pipeline, scorer_spec

__all__ = [
    "DEFAULT_SCORERS",
    "Leaf",
    "Plan",
    "check_budget",
    "check_headroom",
    "check_percentile",
    "leaves",
    "plan",
]

#: the candidate scorers when none are given: every local scorer that runs offline
DEFAULT_SCORERS: dict[str, Spec] = {
    "bm25": {"scorer": "bm25"},
    "bi-encoder": {"scorer": "bi-encoder", "model": "minilm"},
    "maxsim": {"scorer": "colbert", "model": "minilm"},
}
#: below this many judged queries, k folds instead of one dev / test split
KFOLD_BELOW = 200
KFOLDS = 5
#: fewer dev queries than this: a warning that the choice is noisy
FEW_DEV = 50
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_percentile(value: Any) -> float:
    """``95``, ``95.0``, ``"95"`` or ``"p95"`` as 95.0; ConfigError outside (0, 100)."""
    text = value.strip().lower().removeprefix("p") if isinstance(value, str) else value
    try:
        p = float(text) if isinstance(text, str) else as_real(text, "percentile")
    except (ValueError, ConfigError):
        p = None
    if p is None or not 0 < p < 100:
        raise ConfigError(f"percentile must be a number in (0, 100) such as 95 or 'p50', got {value!r}")
    return p


def check_headroom(value: Any) -> float:
    """The share of the budget kept free: a number in [0, 1)."""
    share = as_real(value, "headroom")
    if share is None or not 0 <= share < 1:
        raise ConfigError(f"headroom must be a number in [0, 1), got {value!r}")
    return share


def check_budget(value: Any) -> float:
    """A latency budget in milliseconds: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
        raise ConfigError(f"budget_ms must be a number of milliseconds > 0, got {value!r}")
    return float(value)


@dataclass
class Leaf:
    """A candidate scorer: its name, the leaf strategy that scores, and the spec that rebuilds it."""

    name: str
    strategy: Strategy
    spec: Spec


def _load(name: str, value: ScorerLike | Spec) -> tuple[ScorerLike, Spec]:
    try:
        if isinstance(value, Mapping):
            return build_pipeline(dict(value)), dict(value)
        return value, scorer_spec(value)
    except RerankError as exc:
        raise ConfigError(f"candidate scorer {name!r} cannot be loaded: {exc}") from exc
    except Exception as exc:  # a model that cannot load says so, naming the scorer
        raise ConfigError(f"candidate scorer {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def leaves(scorers: Mapping[str, ScorerLike | Spec] | None, cross_encoders: Sequence[str]) -> dict[str, Leaf]:
    """The candidate scorers, loaded: ``scorers`` (name -> spec or built registry scorer; None:
    :data:`DEFAULT_SCORERS`) and a cross-encoder per directory of ``cross_encoders``."""
    given: dict[str, ScorerLike | Spec] = dict(DEFAULT_SCORERS if scorers is None else scorers)
    for i, path in enumerate(cross_encoders, start=1):
        name = "cross-encoder" if len(cross_encoders) == 1 else f"cross-encoder{i}"
        given[name] = {"scorer": "cross-encoder", "model": str(path)}
    if not given:
        raise ConfigError("tune needs at least one candidate scorer")
    out = {}
    for name, value in given.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == RETRIEVAL:
            raise ConfigError(
                f"candidate scorer name {name!r} must be letters, digits, '.', '_' or '-', and not {RETRIEVAL!r}"
            )
        built, spec = _load(name, value)
        strategy = as_strategy(built)
        if not isinstance(strategy, ScorerLeaf | RankerLeaf):
            raise ConfigError(
                f"candidate {name!r} is the strategy {strategy.name!r}: tune searches over leaf scorers and "
                "builds the strategies (cascades, fusion, selective heads) itself"
            )
        out[name] = Leaf(name, strategy, spec)
    return out


@dataclass
class Plan:
    """Which queries choose (dev) and which report (test): one split, or k folds."""

    method: str
    folds: list[tuple[list[str], list[str]]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)


def _judged(data: str | Path, split: str) -> BeirData:
    dataset = load_beir(data, split)
    if not dataset.qrels:
        raise ConfigError(f"no judged queries in split {split!r} ({Path(data) / 'qrels' / f'{split}.tsv'})")
    missing = sorted(q for q in dataset.qrels if q not in dataset.queries)
    if missing:
        raise ConfigError(f"qrels/{split}.tsv judges queries that queries.jsonl lacks: {missing[:5]}")
    return dataset


def _dev_split(
    data: str | Path, dev_split: str, limit: int | None, test: Mapping[str, Any]
) -> tuple[list[str], dict[str, str], dict[str, dict[str, int]]]:
    path = Path(data) / "qrels" / f"{dev_split}.tsv"
    if not path.is_file():
        raise ConfigError(f"no qrels file for dev split {dev_split!r}: {path} is missing")
    judged = read_qrels(path)
    texts = read_queries(Path(data) / "queries.jsonl")
    ids = [q for q in sorted(judged) if q in texts and q not in test][:limit]
    if not ids:
        raise ConfigError(f"no judged queries in split {dev_split!r} ({path}) that are not test queries")
    return ids, {q: texts[q] for q in ids}, {q: judged[q] for q in ids}


def plan(
    data: str | Path, split: str, dev_split: str | None, seed: int, limit: int | None
) -> tuple[Plan, BeirData]:
    """The queries of ``split`` (the first ``limit`` judged ones, sorted) and how they are divided:
    the qrels' own ``dev_split`` as dev; else a seeded half / half split at 200 judged queries or
    more; else 5 folds."""
    dataset = _judged(data, split)
    test_ids = sorted(dataset.qrels)[:limit]
    queries = {q: dataset.queries[q] for q in test_ids}
    qrels = {q: dataset.qrels[q] for q in test_ids}
    if dev_split is not None:
        dev_ids, dev_queries, dev_qrels = _dev_split(data, dev_split, limit, qrels)
        queries.update(dev_queries)
        qrels.update(dev_qrels)
        out = Plan(
            f"the qrels' own splits: dev = {dev_split}, test = {split}", [(dev_ids, test_ids)], queries, qrels
        )
    elif len(test_ids) >= KFOLD_BELOW:
        dev, test = stats.split_queries(test_ids, seed=seed)
        out = Plan(
            f"{split} split at random (seed {seed}) into dev and test halves", [(dev, test)], queries, qrels
        )
    else:
        if len(test_ids) < 2:
            raise ConfigError(f"split {split!r} has {len(test_ids)} judged query: tuning needs at least 2")
        k = min(KFOLDS, len(test_ids))
        method = f"{k}-fold cross-validation over {len(test_ids)} {split} queries (fewer than {KFOLD_BELOW}; seed {seed})"
        out = Plan(method, stats.folds(test_ids, k=k, seed=seed), queries, qrels)
    smallest = min(len(dev) for dev, _ in out.folds)
    if smallest < FEW_DEV:
        out.warnings.append(
            f"only {smallest} judged dev queries (fewer than {FEW_DEV}): the choice is noisy; judge more queries"
        )
    return out, dataset
