"""The HTTP scorer base (:class:`HTTPScorer`) and the failure policy of the API backends
(Cohere, rerank servers).

:class:`HTTPScorer` owns what every API backend does alike: options checked once (timeout,
deadline, batch size, concurrency, retries, fallback), credentials in the base URL and the API key
held as secrets and hidden from logs, one client per event loop, batches sent concurrently under
one deadline with retries, and copies and pickles made of settings, never of keys. A backend adds
its protocol only: the request it sends and how it reads the answer.

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
from typing import Any, ClassVar, Generic, Literal, TypeVar

from rerankers_plugins._checks import as_int, as_real
from rerankers_plugins._optional import require
from rerankers_plugins._secret import Secret, secret_from
from rerankers_plugins.errors import BackendError, ConfigError, DeadlineExceeded
from rerankers_plugins.scorers.base import BaseScorer, _rebuild

__all__ = [
    "DEFAULT_DEADLINE_FACTOR",
    "DeadlineExceeded",
    "HTTPScorer",
    "LoopLocal",
    "OnError",
    "RetryPolicy",
    "Send",
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


def check_deadline(deadline: Any) -> float | None:
    """``deadline`` as positive seconds, or None (not given)."""
    return as_real(deadline, "deadline", allow_none=True, positive=True)


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


def _query_pairs(query: str) -> list[tuple[str, str, str, bool]]:
    """Each ``name=value`` of a query string as written: the pair, its name, its value, and whether
    the value is a credential (under a name that says so)."""
    out = []
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        secret = bool(value) and _SECRET_PARAMS.match(urllib.parse.unquote_plus(name)) is not None
        out.append((pair, name, value, secret))
    return out


def url_secrets(url: str) -> list[Secret]:
    """The secret parts of ``url``: a userinfo password (or a lone user name) and the values of
    query parameters whose names say they are credentials."""
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username:
        found.append(parts.username)
    for _, _, value, secret in _query_pairs(parts.query):
        if secret:
            found += [value, urllib.parse.unquote_plus(value)]  # as written, and as decoded
    return [Secret(v) for v in found]


def shown_url(url: str) -> str:
    """``url`` as it may be shown: the parts :func:`url_secrets` finds replaced by ``***`` where
    they stand (the password, else a lone user name; the credential query values), so that a short
    password never masks a piece of the scheme, host or path that happens to contain it."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        if parts.password:
            netloc = f"{netloc.partition(':')[0]}:***@{host}"
        elif parts.username:
            netloc = f"***@{host}"
    query = "&".join(f"{name}=***" if secret else pair for pair, name, _, secret in _query_pairs(parts.query))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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


#: one attempt at one batch: the batch's texts -> their scores (raises TransientError to be retried)
Send = Callable[[Sequence[str]], Awaitable[list[float]]]


class HTTPScorer(BaseScorer):
    """The base of the API backends: everything but the protocol.

    It checks the shared options, holds the base URL and the API key as secrets (the key from the
    argument or the ``key_env`` environment variable; credentials in the URL are redacted from
    the name, repr, errors and the HTTP client's log), keeps one client per event loop, and scores
    a call as batches of ``batch_size`` sent concurrently, each retried by ``retry``, all bounded
    by one ``deadline``. The sync :meth:`score` runs the async path. Copies are the object itself
    (its settings are fixed and its key stays with it); a pickle holds the settings, not the key,
    and a base URL holding credentials refuses to be pickled.

    A backend implements :meth:`_new_async` (a client for the running loop), :meth:`_sender`
    (one attempt at one batch), :meth:`_settings` (its own options, for pickling),
    :meth:`_repr_args` and ``fingerprint``, and names its ``extra`` and ``key_env``.
    """

    #: the extra that installs the backend's client libraries (named by MissingExtraError)
    extra: ClassVar[str]
    #: the environment variable the API key is read from, again after unpickling
    key_env: ClassVar[str]
    #: the most documents one request may carry (the API's limit), if it has one
    max_batch_size: ClassVar[int | None] = None

    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | Secret | None,
        key_required: bool,
        timeout: float,
        deadline: float | None,
        batch_size: int,
        max_concurrency: int,
        retry: RetryPolicy | None,
        on_error: OnError,
    ) -> None:
        self._httpx = require("httpx", self.extra)
        self.timeout = as_real(timeout, "timeout", positive=True) or 0.0  # positive: never None
        self.deadline = resolve_deadline(deadline, self.timeout)
        self.batch_size = as_int(batch_size, "batch_size", minimum=1) or 1
        if self.max_batch_size is not None and self.batch_size > self.max_batch_size:
            raise ConfigError(
                f"batch_size must be in 1..{self.max_batch_size} (the API's limit per request), got {batch_size}"
            )
        self.max_concurrency = as_int(max_concurrency, "max_concurrency", minimum=1) or 1
        self.retry = retry or RetryPolicy()
        self.on_error = check_on_error(on_error)
        self._url = Secret(base_url) if base_url else None  # may hold credentials: used, never shown
        self._secrets = url_secrets(base_url) if base_url else []
        hide_in_http_logs(self, self._secrets)
        self.base_url = shown_url(base_url) if base_url else None
        self._key = secret_from(api_key, self.key_env, required=key_required, who=type(self).__name__)
        self._key_from_env = api_key is None
        if self._key is not None:
            self._secrets.append(self._key)
        # one client per event loop (async clients cannot cross loops), closed with its loop
        self._async_clients: LoopLocal[Any] = LoopLocal(self._new_async)

    # -- what a backend implements -----------------------------------------------------------------

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        """A client for the running event loop, and how to close it."""
        raise NotImplementedError

    async def _sender(self, query: str, end: float | None) -> Send:
        """How this call sends one batch (once; the base retries it); ``end`` is the call's
        ``time.monotonic()`` deadline, or None."""
        raise NotImplementedError

    def _settings(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The backend's own constructor arguments (positional, keyword), for pickling."""
        raise NotImplementedError

    def _repr_args(self) -> str:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    @property
    def _raw_url(self) -> str | None:
        """The base URL as given, credentials included: for requests and pickles only."""
        return self._url.get_secret_value() if self._url is not None else None

    def _split_url(self) -> tuple[str | None, list[tuple[str, str]]]:
        """The base URL without its query string (None when not given), and the query's
        parameters, sent with every request."""
        raw = self._raw_url
        return split_query(raw) if raw is not None else (None, [])

    def _status_error(
        self, who: str, status: int, headers: Mapping[str, str] | None, body: str
    ) -> BackendError:
        """An HTTP error answer: 429 and 5xx are retried (honouring ``Retry-After``), others are not."""
        message = f"{who} answered HTTP {status}: {self._redact(body)[:300]}"
        if status == 429 or status >= 500:
            return TransientError(message, status=status, retry_after=parse_retry_after(headers))
        return BackendError(message)

    def _client_error(self, who: str, exc: Exception) -> BackendError:
        """A failure of the HTTP client: timeouts, refused and dropped connections are retried."""
        message = self._redact(f"{who}: {type(exc).__name__}: {exc}")
        if isinstance(exc, self._httpx.TransportError):
            return TransientError(message)
        return BackendError(message)

    @property
    def _who(self) -> str:
        """How errors and logs name this backend."""
        return self.name

    def _batches(self, texts: Sequence[str]) -> list[Sequence[str]]:
        k = self.batch_size
        return [texts[i : i + k] for i in range(0, len(texts), k)]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return run_sync(self.ascore(query, texts))

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        async with bounded(self.deadline, self._who) as end:
            send = await self._sender(query, end)
            attempts = [
                self.retry.acall(_bind(send, b), end=end, who=self._who) for b in self._batches(texts)
            ]
            parts = await gather_cancelling(attempts)
        return [s for part in parts for s in part]

    async def aclose(self) -> None:
        """Close the running event loop's client now (it closes with the loop anyway)."""
        await self._async_clients.aclose()

    def __copy__(self) -> HTTPScorer:
        return self  # settings are fixed after construction; the key stays with the one object

    def __deepcopy__(self, memo: dict[int, Any]) -> HTTPScorer:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings, without the key (read from ``key_env`` again on load)."""
        who = type(self).__name__
        if self._raw_url is not None and url_secrets(self._raw_url):
            raise TypeError(
                f"a {who} whose base_url holds credentials cannot be pickled (they would be "
                f"written out in plain text): pass the key as api_key / {self.key_env} instead"
            )
        if not self._key_from_env:
            logger.info("pickling %s without its api_key: the copy reads %s", self.name, self.key_env)
        args, own = self._settings()
        settings = {
            "timeout": self.timeout,
            "deadline": self.deadline,
            "batch_size": self.batch_size,
            "max_concurrency": self.max_concurrency,
            "retry": self.retry,
            "on_error": self.on_error,
            **own,
        }
        return (_rebuild, (type(self), args, settings))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()}, api_key={'set' if self._key else None})"


def _bind(send: Send, batch: Sequence[str]) -> Callable[[], Awaitable[list[float]]]:
    return lambda: send(batch)
