"""Exceptions raised by rerankers-plugins.

Hierarchy::

    RerankError                      base of everything this package raises on purpose
    ├── MissingExtraError(ImportError)   an optional dependency is not installed; names the pip command
    ├── ConfigError(ValueError)          bad arguments or inputs: a threshold off the scorer's scale,
    │                                    top_n <= 0, an empty query, an unknown backend name, ...
    ├── BudgetExceeded(RuntimeError)     a call would pass a spending budget (max_search_units,
    │                                    max_tokens): refused before sending; not a BackendError, so
    │                                    on_error="keep_order" never hides a spent budget
    └── BackendError(RuntimeError)       a backend failed or misbehaved: a model that cannot be loaded,
        │                                a scorer returning the wrong number of scores or NaN
        ├── DeadlineExceeded             a call's total deadline passed (retries, waits and queueing included)
        └── Overloaded                   a shared local model's queue is full; carries ``retry_after``

Catching ``RerankError`` catches them all; each also derives from the builtin a caller would
naturally catch (``ImportError``, ``ValueError``, ``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetExceeded",
    "ConfigError",
    "DeadlineExceeded",
    "MissingExtraError",
    "Overloaded",
    "RerankError",
]


class RerankError(Exception):
    """Base class of every exception raised on purpose by rerankers-plugins."""


class MissingExtraError(RerankError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"This feature needs the optional dependency {module!r}, which is not installed. "
            f'Install it with: pip install "rerankers-plugins[{extra}]"'
        )


class ConfigError(RerankError, ValueError):
    """Invalid configuration or call arguments (the message names the offending value)."""


class BackendError(RerankError, RuntimeError):
    """A scoring backend failed to load or returned something unusable."""


class BudgetExceeded(RerankError, RuntimeError):
    """A call would pass a spending budget (``CohereScorer(max_search_units=...)``, an LLM
    reranker's ``max_tokens``): it was refused before anything was sent. ``spent``, ``limit`` and
    ``needed`` (the call's estimate) are in the message and as attributes.

    Not a :class:`BackendError`: ``on_error="keep_order"`` does not turn a spent budget into a
    silent fallback; ``reset_usage()`` on the scorer starts a new budget.
    """

    def __init__(self, message: str, *, spent: int = 0, limit: int = 0, needed: int = 0) -> None:
        super().__init__(message)
        self.spent = spent
        self.limit = limit
        self.needed = needed

    def __reduce__(self) -> tuple[object, ...]:
        return (_budget_exceeded, (str(self), self.spent, self.limit, self.needed))


class DeadlineExceeded(BackendError):
    """A call's total deadline (connect, read, retries and waits included) passed."""


class Overloaded(BackendError):
    """A shared local model has more tokens waiting than its queue limit
    (``scheduler={"max_queue_tokens": ...}``): the request was refused at once, nothing computed.

    ``retry_after``: seconds until the queue has drained at the model's recent throughput (None
    before the first batch has been timed); a server answers 503 with a ``Retry-After`` header.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_overloaded, (str(self), self.retry_after))


def _overloaded(message: str, retry_after: float | None) -> Overloaded:
    return Overloaded(message, retry_after=retry_after)


def _budget_exceeded(message: str, spent: int, limit: int, needed: int) -> BudgetExceeded:
    return BudgetExceeded(message, spent=spent, limit=limit, needed=needed)
