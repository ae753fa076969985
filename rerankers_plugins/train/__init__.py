"""Fine-tuning rerankers on BEIR-format data (``rerankers-plugins train``).

Needs the ``train`` extra (sentence-transformers' trainer, datasets, accelerate, bm25s).
"""

from __future__ import annotations

from rerankers_plugins.train.fine_tune import TrainResult, fine_tune, fine_tune_with
from rerankers_plugins.train.negatives import as_pipeline, first_stage, mine_negatives
from rerankers_plugins.train.settings import LOSSES, TrainSettings

__all__ = [
    "LOSSES",
    "TrainResult",
    "TrainSettings",
    "as_pipeline",
    "fine_tune",
    "fine_tune_with",
    "first_stage",
    "mine_negatives",
]
