"""Evaluation helpers: first-stage retrieval over a corpus, BEIR-format data, metrics."""
