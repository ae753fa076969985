"""Offline jobs over many queries: ``rerank_dataset`` (and ``rerankers-plugins batch``) reranks a
large input with one pipeline, on the embedded local engine or on Ray Data, writing every row
exactly once, resumable (:mod:`.inputs`, :mod:`.store`, :mod:`.engine`, :mod:`.ray`)."""

from rerankers_plugins.batch.engine import BatchSummary, TooManyErrors, rerank_dataset, resolve_spec
from rerankers_plugins.batch.inputs import read_input
from rerankers_plugins.batch.store import read_rows

__all__ = ["BatchSummary", "TooManyErrors", "read_input", "read_rows", "rerank_dataset", "resolve_spec"]
