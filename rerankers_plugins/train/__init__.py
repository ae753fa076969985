"""Fine-tuning rerankers on BEIR-format data (``rerankers-plugins train``).

Needs the ``train`` extra (sentence-transformers' trainer, datasets, accelerate, bm25s).
"""

from __future__ import annotations

from rerankers_plugins.train.fine_tune import LOSSES, TrainResult, fine_tune
from rerankers_plugins.train.negatives import as_pipeline, first_stage, mine_negatives

__all__ = ["LOSSES", "TrainResult", "as_pipeline", "fine_tune", "first_stage", "mine_negatives"]
