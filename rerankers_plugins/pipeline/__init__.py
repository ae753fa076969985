"""Rankings and the strategies over any scorer: thresholds, selective, cascades, fusion, caching."""

from rerankers_plugins.pipeline.cache import CachedScorer
from rerankers_plugins.pipeline.calibrate import Calibrated, calibrate
from rerankers_plugins.pipeline.cascade import Cascade, Stage
from rerankers_plugins.pipeline.hybrid import Hybrid, Signal
from rerankers_plugins.pipeline.leaves import ScorerLike, as_strategy
from rerankers_plugins.pipeline.long_document import LongDocument
from rerankers_plugins.pipeline.ranking import Entry, Ranking, Strategy
from rerankers_plugins.pipeline.rerank import Explained, aexplain, arerank, explain, rerank
from rerankers_plugins.pipeline.selective import Selective
from rerankers_plugins.pipeline.threshold import Threshold

__all__ = [
    "CachedScorer",
    "Calibrated",
    "Cascade",
    "Entry",
    "Explained",
    "Hybrid",
    "LongDocument",
    "Ranking",
    "ScorerLike",
    "Selective",
    "Signal",
    "Stage",
    "Strategy",
    "Threshold",
    "aexplain",
    "arerank",
    "as_strategy",
    "calibrate",
    "explain",
    "rerank",
]
