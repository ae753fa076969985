"""Scoring backends. Each module implements the Scorer (or Ranker) protocol and nothing else."""

from rerankers_plugins.scorers.base import BaseScorer, Ranker, Scorer

__all__ = ["BaseScorer", "Ranker", "Scorer"]
