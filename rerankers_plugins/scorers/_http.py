"""Failure policy shared by the API backends (Cohere, rerank servers).

Retries use tenacity: exponential backoff with jitter on 429, 5xx, timeouts and connection errors,
honouring ``Retry-After`` when the server sends one; other 4xx and malformed answers are not
retried. What a backend raises after the last attempt is a :class:`BackendError`; with
``on_error="keep_order"`` :func:`rerankers_plugins.rerank` then returns every candidate in its
original order, marked in ``details``, and logs a warning.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError, ConfigError

__all__ = [
    "LoopLocal",
    "OnError",
    "RetryPolicy",
    "TransientError",
    "check_on_error",
    "merge_indexed",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "keep_order"]
_T = TypeVar("_T")


async def _keeper(aclose: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Holds a resource open for as long as its event loop lives: ``asyncio.run`` closes every
    live async generator of its loop before closing it (``shutdown_asyncgens``), and a collected
    generator is closed on its loop, so the ``finally`` runs in either case."""
    try:
        yield
    finally:
        await aclose()


class LoopLocal(Generic[_T]):
    """One async resource (an HTTP client) per running event loop.

    Async clients cannot cross event loops, so each loop gets its own, made on first use by
    ``make() -> (resource, aclose)``. It is closed when its loop shuts down (``asyncio.run``
    returning), when this object is collected, or by :meth:`aclose`; a later loop gets a fresh
    one. Loops are weak keys: a finished loop is never kept alive by its entry.
    """

    def __init__(self, make: Callable[[], tuple[_T, Callable[[], Awaitable[None]]]]) -> None:
        self._make = make
        self._entries: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[_T, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> _T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is None:
            value, aclose = self._make()
            keeper = _keeper(aclose)
            await keeper.asend(None)  # runs to the yield at once: no other task can interleave
            entry = (value, keeper)
            self._entries[loop] = entry
        return entry[0]

    async def aclose(self) -> None:
        """Close the running loop's resource now (the next use makes a new one)."""
        entry = self._entries.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()


class TransientError(BackendError):
    """A failure worth retrying: 429, 5xx, a timeout or a refused / dropped connection."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "keep_order"):
        raise ConfigError(f"on_error must be 'raise' or 'keep_order', got {on_error!r}")
    return on_error  # type: ignore[return-value]


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits grow ``initial * 2**n`` with full jitter, capped at ``max_wait``.

    A server's ``Retry-After`` wins over the computed wait (capped at ``max_retry_after``).
    """

    attempts: int = 4
    initial: float = 0.5
    max_wait: float = 8.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")

    def _kwargs(self) -> dict[str, Any]:
        tenacity = require("tenacity", "remote")
        jitter = tenacity.wait_random_exponential(multiplier=self.initial, max=self.max_wait)

        def wait(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                return min(exc.retry_after, self.max_retry_after)
            return float(jitter(state))

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "attempt %d/%d failed (%s); retrying in %.2f s",
                state.attempt_number,
                self.attempts,
                exc,
                state.next_action.sleep if state.next_action else 0.0,
            )

        return {
            "stop": tenacity.stop_after_attempt(self.attempts),
            "wait": wait,
            "retry": tenacity.retry_if_exception_type(TransientError),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def call(self, fn: Callable[[], _T]) -> _T:
        tenacity = require("tenacity", "remote")
        for attempt in tenacity.Retrying(**self._kwargs()):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        tenacity = require("tenacity", "remote")
        async for attempt in tenacity.AsyncRetrying(**self._kwargs()):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover


def merge_indexed(pairs: Sequence[tuple[Any, Any]], n: int, who: str) -> list[float]:
    """Scores by ``index`` from a server's ``(index, score)`` pairs for a batch of ``n`` texts.

    Results are mapped by index, never by position. A repeated, out-of-range or non-numeric entry
    is a :class:`BackendError` (not retried). A server that answers only its top k of the ``n``
    (some servers apply their own ``top_n``) loses no document: the ones it left out get score
    0.0, below the ones it ranked, and a warning is logged.
    """
    scores: list[float | None] = [None] * n
    for index, raw_score in pairs:
        if isinstance(index, bool) or not isinstance(index, int):
            raise BackendError(f"{who} returned a non-integer index {index!r}")
        if not 0 <= index < n:
            raise BackendError(f"{who} returned index {index}, outside the {n} documents sent")
        if scores[index] is not None:
            raise BackendError(f"{who} returned index {index} twice")
        try:
            value = float(raw_score)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"{who} returned a non-numeric score {raw_score!r} for index {index}") from exc
        if value != value:  # NaN
            raise BackendError(f"{who} returned NaN for index {index}")
        scores[index] = value
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        logger.warning(
            "%s returned %d of %d results; the %d it left out are kept, with score 0.0 (the bottom of the scale)",
            who,
            n - len(missing),
            n,
            len(missing),
        )
    return [0.0 if s is None else float(s) for s in scores]
