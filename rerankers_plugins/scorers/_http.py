"""Failure policy shared by the API backends (Cohere, rerank servers).

Retries: exponential backoff with full jitter on 429, 5xx, timeouts and connection errors,
honouring ``Retry-After`` when the server sends one (a ``nan`` or unparsable value is ignored);
other 4xx and malformed answers are not retried. A total ``deadline`` per call bounds connect,
read, retries and waits together, whatever the client (an injected SDK client included); without
one, :func:`resolve_deadline` gives ``DEFAULT_DEADLINE_FACTOR`` times the per-request timeout.
Sibling requests of a failed call are cancelled. What a backend raises after the last attempt is
a :class:`BackendError`; with ``on_error="keep_order"`` :func:`rerankers_plugins.rerank` then
returns every candidate in its original order, marked in ``details``, and logs a warning.

Thread safety: one scorer may serve any number of threads and event loops at once. Each loop gets
its own client (:class:`LoopLocal`, whose table is guarded by a lock); a blocking SDK call runs in
a worker thread (:func:`in_thread`) so that its caller can stop waiting at the deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import email.utils
import logging
import math
import random
import re
import threading
import time
import urllib.parse
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from rerankers_plugins._secret import Secret
from rerankers_plugins.errors import BackendError, ConfigError, DeadlineExceeded

__all__ = [
    "DEFAULT_DEADLINE_FACTOR",
    "DeadlineExceeded",
    "LoopLocal",
    "OnError",
    "RetryPolicy",
    "TransientError",
    "bounded",
    "check_deadline",
    "check_on_error",
    "gather_cancelling",
    "hide_in_http_logs",
    "in_thread",
    "merge_indexed",
    "parse_retry_after",
    "redact",
    "resolve_deadline",
    "run_sync",
    "split_query",
    "url_secrets",
    "wait_until",
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

    Thread-safe: a scorer shared by a thread pool sees one loop per thread (each sync call runs
    its own ``asyncio.run``), and every thread reads, adds and prunes entries of the one table, so
    each of those steps holds a lock (never across an ``await``).
    """

    def __init__(self, make: Callable[[], tuple[_T, Callable[[], Awaitable[None]]]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[_T, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> _T:
        loop = asyncio.get_running_loop()
        with self._lock:
            for gone in [other for other in list(self._entries) if other.is_closed()]:
                # its resource was closed with it; the entry kept the loop alive
                self._entries.pop(gone, None)
            entry = self._entries.get(loop)
            if entry is not None:
                return entry[0]
        # only tasks of this loop (this thread) can add this loop's entry, and none runs until the
        # keeper's first step below has returned: no lock is needed to make it
        value, aclose = self._make()
        keeper = _keeper(aclose)
        await keeper.asend(None)  # runs to the yield at once: no other task can interleave
        with self._lock:
            self._entries[loop] = (value, keeper)
        return value

    async def aclose(self) -> None:
        """Close the running loop's resource now (the next use makes a new one)."""
        with self._lock:
            entry = self._entries.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


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
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be an int >= 1, got {self.attempts!r}")
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


def check_deadline(deadline: Any) -> float | None:
    """``deadline`` as positive seconds, or None (not given)."""
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0 < deadline < math.inf:
        raise ConfigError(f"deadline must be a positive number of seconds or None, got {deadline!r}")
    return float(deadline)


#: Without ``deadline=``, a call may take this many times the per-request ``timeout``. A
#: ``timeout`` bounds each socket operation, not the call: a server that trickles its answer (a
#: byte now and then) or a string of timeouts and retries holds a call far longer. Four timeouts
#: leave room for the default four attempts when each of them is cut by its timeout, so the bound
#: never ends a call that the retry policy would have let succeed on a healthy but slow server,
#: and it follows the one number a user already tuned to the server (120 s with the default
#: ``timeout=30``, 4 s with ``timeout=1``).
DEFAULT_DEADLINE_FACTOR = 4.0


def resolve_deadline(deadline: Any, timeout: float) -> float:
    """The total seconds one call may take: ``deadline`` when given, else
    ``DEFAULT_DEADLINE_FACTOR * timeout``."""
    checked = check_deadline(deadline)
    return checked if checked is not None else DEFAULT_DEADLINE_FACTOR * timeout


def in_thread(fn: Callable[[], _T], name: str = "rerankers-plugins-sdk") -> concurrent.futures.Future[_T]:
    """Start ``fn()`` in a daemon thread of its own; its future holds the result or the error.

    For blocking SDK calls (an injected ``cohere.ClientV2``) that no deadline of ours can
    interrupt: the caller waits on the future only until its deadline (:func:`wait_until`, or
    ``asyncio.wrap_future`` under ``asyncio.timeout``), then returns. The thread, abandoned, ends
    when the SDK's own per-request timeout does; being a daemon, it never holds up the interpreter's
    exit (a pool's threads are joined at exit, and ``asyncio.run`` joins its default executor's).
    """
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = context.run(fn)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def wait_until(future: concurrent.futures.Future[_T], end: float, who: str) -> _T:
    """``future.result()``, waiting no later than the ``time.monotonic()`` ``end``; past it
    :class:`DeadlineExceeded` (the work itself is left to finish on its own)."""
    try:
        return future.result(timeout=max(end - time.monotonic(), 0.0))
    except concurrent.futures.TimeoutError as exc:
        if future.done():  # the call itself raised a TimeoutError, just in time
            raise
        raise DeadlineExceeded(f"{who}: no answer within the deadline") from exc


@contextlib.asynccontextmanager
async def bounded(deadline: float | None, who: str) -> AsyncIterator[float | None]:
    """Bound everything inside (requests, retries, waits, sibling batches) by ``deadline`` seconds;
    yields the ``time.monotonic()`` end (None without a deadline). Past it: :class:`DeadlineExceeded`."""
    if deadline is None:
        yield None
        return
    start = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            yield start + deadline
    except TimeoutError as exc:
        raise DeadlineExceeded(
            f"{who}: no answer within the deadline of {deadline:g} s ({time.monotonic() - start:.2f} s spent)"
        ) from exc


async def gather_cancelling(coros: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``coros`` concurrently; the first failure cancels the others and is raised as itself."""
    tasks: list[asyncio.Task[_T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(c)) for c in coros]
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    return [t.result() for t in tasks]


async def _as_coroutine(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        return exc
    return group  # pragma: no cover


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a backend's coroutine from its sync method: ``asyncio.run`` here, or in a worker thread
    when this thread already runs an event loop. Each run has its own loop, so its per-loop HTTP
    client is closed when it returns, and the sync path shares the async path's deadline and
    cancellation (connections are not pooled across sync calls)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rerankers-plugins-http") as pool:
        return pool.submit(asyncio.run, coro).result()


_SECRET_PARAMS = re.compile(
    r"(?i)^(api[-_]?key|key|token|access[-_]?token|auth|authorization|password|passwd|secret|client[-_]?secret"
    r"|sig|signature|x-api-key|subscription[-_]?key|code)$"
)


def split_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``url`` without its query string, and the query's parameters (sent with every request,
    so that a path can be appended to the base URL)."""
    parts = urllib.parse.urlsplit(url)
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return base, urllib.parse.parse_qsl(parts.query, keep_blank_values=True)


def url_secrets(url: str) -> list[Secret]:
    """The secret parts of ``url``: a userinfo password (or a lone user name) and the values of
    query parameters whose names say they are credentials."""
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username:
        found.append(parts.username)
    for pair in parts.query.split("&"):
        raw_name, _, raw_value = pair.partition("=")
        if raw_value and _SECRET_PARAMS.match(urllib.parse.unquote_plus(raw_name)):
            found += [raw_value, urllib.parse.unquote_plus(raw_value)]  # as written, and as decoded
    return [Secret(v) for v in found]


class _RedactSecrets(logging.Filter):
    """On the ``httpx`` logger (which logs every request URL at INFO): replaces the credentials our
    scorers found in their base URLs by ``***`` before any handler sees the record. Secrets are
    held per owning scorer, weakly: a collected scorer's credentials are forgotten with it."""

    def __init__(self) -> None:
        super().__init__()
        self._owners: weakref.WeakKeyDictionary[object, tuple[Secret, ...]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, owner: object, secrets: Sequence[Secret]) -> None:
        with self._lock:
            self._owners[owner] = tuple(secrets)

    @property
    def secrets(self) -> set[Secret]:
        with self._lock:
            return {s for held in self._owners.values() for s in held}

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if secrets:
            message = record.getMessage()
            clean = redact(message, list(secrets))
            if clean != message:
                record.msg, record.args = clean, ()
        return True


_HTTPX_FILTER = _RedactSecrets()
logging.getLogger("httpx").addFilter(_HTTPX_FILTER)


def hide_in_http_logs(owner: object, secrets: Sequence[Secret]) -> None:
    """Redact ``secrets`` from what the HTTP client logs (URLs holding credentials) for as long
    as ``owner`` (the scorer whose URL holds them) lives."""
    if secrets:
        _HTTPX_FILTER.add(owner, secrets)


def redact(text: str, secrets: Sequence[Secret]) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced by ``***``."""
    for secret in sorted({s.get_secret_value() for s in secrets}, key=len, reverse=True):
        if secret:
            for form in (
                secret,
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
            ):
                text = text.replace(form, "***")
    return text


def merge_indexed(pairs: Sequence[tuple[Any, Any]], n: int, who: str) -> list[float]:
    """Scores by ``index`` from a server's ``(index, score)`` pairs for a batch of ``n`` texts.

    Results are mapped by index, never by position. Every one of the ``n`` indices must come back
    exactly once with a finite number: a missing, repeated, out-of-range or non-integer index, or a
    non-numeric or non-finite score, is a :class:`BackendError` (not retried) naming it, so that
    ``on_error="keep_order"`` passes the candidates through, marked, instead of a document being
    scored by a guess.
    """
    scores: list[float | None] = [None] * n
    for index, raw_score in pairs:
        if isinstance(index, bool) or not isinstance(index, int):
            raise BackendError(f"{who} returned a non-integer index {index!r}")
        if not 0 <= index < n:
            raise BackendError(f"{who} returned index {index}, outside the {n} documents sent")
        if scores[index] is not None:
            raise BackendError(f"{who} returned index {index} twice")
        scores[index] = _checked_score(raw_score, index, who)
    missing = [i for i, s in enumerate(scores) if s is None]
    if n and len(missing) == n:
        raise BackendError(f"{who} answered with no results for the {n} documents sent")
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise BackendError(
            f"{who} returned {n - len(missing)} of {n} results: no score for index {shown} "
            "(does the server apply a top_n of its own?)"
        )
    return [float(s) for s in scores if s is not None]


def _checked_score(raw_score: Any, index: int, who: str) -> float:
    if isinstance(raw_score, bool) or not isinstance(raw_score, int | float):
        raise BackendError(f"{who} returned a non-numeric score {raw_score!r} for index {index}")
    value = float(raw_score)
    if not math.isfinite(value):
        raise BackendError(f"{who} returned a non-finite score ({value}) for index {index}")
    return value
