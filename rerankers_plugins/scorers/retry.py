"""Retries of the API backends: :class:`RetryPolicy` (attempts, backoff with full jitter,
``Retry-After``, the deadline) and :class:`TransientError`, the failures worth retrying (429, 5xx,
timeouts, dropped connections). ``RemoteScorer(retry=RetryPolicy(...))``, ``CohereScorer(retry=...)``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BackendError, ConfigError, DeadlineExceeded

__all__ = ["RetryPolicy", "TransientError", "parse_retry_after"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class TransientError(BackendError):
    """A failure worth retrying: 429, 5xx, a timeout or a refused / dropped connection."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(seconds, 0.0) if math.isfinite(seconds) else None  # nan / inf: ignored
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits grow ``initial * 2**n`` with full jitter, capped at ``max_wait``.

    A server's ``Retry-After`` wins over the computed wait (capped at ``max_retry_after``). Only
    :class:`TransientError` is retried. With a deadline, a wait that would end past it is not
    taken: the call fails at once with :class:`DeadlineExceeded`.
    """

    attempts: int = 4
    initial: float = 0.5
    max_wait: float = 8.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        as_int(self.attempts, "RetryPolicy.attempts", minimum=1)
        for name in ("initial", "max_wait", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ConfigError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")

    def wait(self, attempt: int, exc: TransientError) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        if exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return random.uniform(0, min(self.max_wait, self.initial * 2 ** (attempt - 1)))

    def _next_wait(self, attempt: int, exc: TransientError, end: float | None, who: str) -> float:
        """The wait before the next attempt; raises when there is none (last attempt, or past the deadline)."""
        if attempt >= self.attempts:
            raise exc
        wait = self.wait(attempt, exc)
        if end is not None and time.monotonic() + wait >= end:
            raise DeadlineExceeded(
                f"{who}: deadline reached after {attempt} attempt(s); the next one (in {wait:.2f} s) "
                f"would start past it. Last error: {exc}"
            ) from exc
        logger.warning("attempt %d/%d failed (%s); retrying in %.2f s", attempt, self.attempts, exc, wait)
        return wait

    def call(self, fn: Callable[[], _T], *, end: float | None = None, who: str = "request") -> _T:
        """``fn()`` with retries; ``end`` is a ``time.monotonic()`` deadline checked between attempts."""
        for attempt in range(1, self.attempts + 1):
            if end is not None and time.monotonic() >= end:
                raise DeadlineExceeded(f"{who}: deadline reached before attempt {attempt}")
            try:
                return fn()
            except TransientError as exc:
                time.sleep(self._next_wait(attempt, exc, end, who))
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(
        self, fn: Callable[[], Awaitable[_T]], *, end: float | None = None, who: str = "request"
    ) -> _T:
        """Async :meth:`call` (the caller bounds the whole call with ``asyncio.timeout``)."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except TransientError as exc:
                await asyncio.sleep(self._next_wait(attempt, exc, end, who))
        raise AssertionError("unreachable")  # pragma: no cover
