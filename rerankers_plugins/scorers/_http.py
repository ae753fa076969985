"""The HTTP scorer base (:class:`HTTPScorer`) and the failure policy of the API backends
(Cohere, rerank servers). Its parts live where their names say: per-loop clients, deadlines and
threads in :mod:`._aio`, retries in :mod:`.retry` (public), secrets and log redaction in
:mod:`rerankers_plugins._secret`.

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

Limits and spending (:mod:`.limits`): with ``rate_limit=`` every attempt (retries included) waits
for its start on the limiter shared by every scorer of the same key and URL in the process, and a
429 pauses them all; each request sent and what the answer says it billed are added to
``scorer.usage``; a backend with a budget (Cohere's ``max_search_units``) holds a call's estimate
before its first request and refuses the call, nothing sent, when it would pass the budget.

A request that was sent (it passed its gate) and ended with no answer to read (abandoned at the
deadline, cancelled with its call, cut by a transport error, or answered with something
unreadable) may still have been billed: it counts as a request in ``usage`` and spends its
estimate on the budget (``usage`` itself reports only what answers said was billed, so the budget
may have spent more than ``usage.search_units``); its start stays in the rate limiter's window at
the estimate. Only an HTTP error status (the server answered, and bills nothing) spends nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from rerankers_plugins._optional import require
from rerankers_plugins._secret import (
    CredentialURL,
    Secret,
    hide_in_http_logs,
    redact,
    secret_from,
    shown_url,
    split_query,
    url_secrets,
)
from rerankers_plugins._validate import as_int, as_real
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._aio import LoopLocal, bounded, gather_cancelling, resolve_deadline, run_sync
from rerankers_plugins.scorers.base import BaseScorer, _rebuild
from rerankers_plugins.scorers.limits import (
    Budget,
    Hold,
    Limiter,
    RateLimit,
    Ticket,
    Usage,
    UsageCounter,
    check_rate_limit,
    limiter_identity,
    shared_limiter,
)
from rerankers_plugins.scorers.retry import RetryPolicy, TransientError, parse_retry_after
from rerankers_plugins.templates import TemplateLike, as_template

__all__ = ["Answer", "Gate", "HTTPScorer", "OnError", "Send", "check_on_error", "merge_indexed"]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "keep_order"]
_T = TypeVar("_T")


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "keep_order"):
        raise ConfigError(f"on_error must be 'raise' or 'keep_order', got {on_error!r}")
    return on_error  # type: ignore[return-value]


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


class _ErrorAnswer(BackendError):
    """An HTTP error answer that is not retried (4xx but 429): the server answered, billing nothing."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _maybe_billed(exc: BaseException) -> bool:
    """Whether a request that was sent and ended with ``exc`` may have been billed: anything but
    an HTTP error answer (a 429 or 5xx, retried, or another 4xx)."""
    if isinstance(exc, TransientError):
        return exc.status is None  # a timeout or a dropped connection: it may have been served
    return not isinstance(exc, _ErrorAnswer)


@dataclass(frozen=True)
class Answer:
    """One request's answer: the batch's scores, what the API says it spent (None: nothing said),
    and the units it billed, for the rate limiter and the budget (None: not said, the estimate
    stands)."""

    scores: list[float]
    usage: Usage | None = None
    units: int | None = None


#: awaited by a backend's :data:`Send` right before the request goes out, once it holds its
#: concurrency slot: waits for the rate limiter (if any) and counts the request
Gate = Callable[[], Awaitable[None]]
#: one attempt at one batch: (the batch's texts, its gate) -> its answer (raises TransientError to
#: be retried)
Send = Callable[[Sequence[str], Gate], Awaitable[Answer]]


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
    :meth:`_repr_args` and ``fingerprint``, and names its ``extra`` and ``key_env``; one that
    counts units (Cohere's search units) implements :meth:`_units` and sets ``Answer.units``.

    ``rate_limit`` shares one limiter with every scorer of the same key and URL (``clients``:
    the injected SDK clients, whose identity stands for the key they hold); ``usage`` and
    :meth:`reset_usage` read and restart what this scorer spent.
    """

    #: the extra that installs the backend's client libraries (named by MissingExtraError)
    extra: ClassVar[str]
    #: the environment variable the API key is read from, again after unpickling
    key_env: ClassVar[str]
    #: the most documents one request may carry (the API's limit), if it has one
    max_batch_size: ClassVar[int | None] = None

    def __init__(
        self,
        base_url: CredentialURL | None,
        *,
        api_key: str | Secret | None,
        key_required: bool,
        timeout: float,
        deadline: float | None,
        batch_size: int,
        max_concurrency: int,
        retry: RetryPolicy | None,
        on_error: OnError,
        rate_limit: RateLimit | None = None,
        clients: Sequence[Any] = (),
        document_template: TemplateLike | None = None,
    ) -> None:
        self._httpx = require("httpx", self.extra)
        self.document_template = as_template(document_template)
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
        self._usage = UsageCounter()
        self._budget: Budget | None = None  # a backend with a spending budget sets it
        self.rate_limit = check_rate_limit(rate_limit)
        self._limiter: Limiter | None = None
        if self.rate_limit is not None:
            self._check_rate_limit(self.rate_limit)
            key = self._key.get_secret_value() if self._key is not None else None
            identity = limiter_identity(key, self._raw_url, clients)
            label = f"{type(self).__name__}({self.base_url or 'default URL'})"
            self._limiter = shared_limiter(identity, self.rate_limit, label)

    # -- what a backend implements -----------------------------------------------------------------

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        """A client for the running event loop, and how to close it."""
        raise NotImplementedError

    async def _sender(self, query: str, end: float | None) -> Send:
        """How this call sends one batch (once; the base retries it); ``end`` is the call's
        ``time.monotonic()`` deadline, or None. The send awaits its gate right before the request
        goes out, inside its concurrency bound (so that a request starts when the rate limiter
        said, not later behind the bound)."""
        raise NotImplementedError

    def _settings(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The backend's own constructor arguments (positional, keyword), for pickling."""
        raise NotImplementedError

    def _repr_args(self) -> str:
        raise NotImplementedError

    def _check_rate_limit(self, limit: RateLimit) -> None:
        """ConfigError where ``limit`` cannot apply to this backend (at construction)."""

    def _units(self, batch: Sequence[str]) -> int:
        """The units one request of ``batch`` is estimated to cost, before it is sent (0: none counted)."""
        return 0

    # -- usage and limits ---------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """What this scorer's calls spent since it was built (or :meth:`reset_usage`): requests
        sent (retries included) and what the API billed (search units, tokens)."""
        return self._usage.get()

    def reset_usage(self) -> Usage:
        """Start counting (and the budget) from zero again; returns what had been spent."""
        if self._budget is not None:
            self._budget.reset()
        return self._usage.reset()

    @contextlib.contextmanager
    def _held(self, batches: Sequence[Sequence[str]]) -> Iterator[Hold | None]:
        """The budget's hold on a call's estimate (BudgetExceeded before anything is sent), given
        back, less what was spent, when the call ends."""
        if self._budget is None:
            yield None
            return
        estimate = sum(self._units(b) for b in batches)
        hold = self._budget.hold(estimate, self._who, self._estimate_rule(batches))
        try:
            yield hold
        finally:
            hold.close()

    def _estimate_rule(self, batches: Sequence[Sequence[str]]) -> str:
        """How the budget's estimate was made, for its error message."""
        return ""

    def _ticket_sync(self, batch: Sequence[str], end: float | None) -> Ticket | None:
        if self._limiter is None:
            return None
        return self._limiter.acquire_sync(self._units(batch), remaining=_left(end), who=self._who)

    async def _ticket(self, batch: Sequence[str], end: float | None) -> Ticket | None:
        if self._limiter is None:
            return None
        return await self._limiter.acquire(self._units(batch), remaining=_left(end), who=self._who)

    def _sent(self) -> None:
        self._usage.add(Usage(requests=1), self.name)

    def _answered(
        self, answer: Answer, batch: Sequence[str], ticket: Ticket | None, hold: Hold | None
    ) -> list[float]:
        """Count what ``answer`` billed: usage, the limiter's units, the budget."""
        if answer.usage is not None:
            self._usage.add(answer.usage, self.name)
        billed = answer.units
        estimate = self._units(batch)
        if ticket is not None and billed is not None and self._limiter is not None:
            self._limiter.settle(ticket, billed)
        if hold is not None:
            hold.spend(estimate if billed is None else billed, estimate)
        return answer.scores

    def _lost(self, exc: BaseException, batch: Sequence[str], hold: Hold | None) -> None:
        """A request of ``batch`` was sent and ended with ``exc``, no answer read: unless the
        server answered with an error status, it spends its estimate (see the module docstring)."""
        if hold is not None and _maybe_billed(exc):
            estimate = self._units(batch)
            hold.spend(estimate, estimate)

    def _failed(self, exc: TransientError, attempt: int) -> TransientError:
        """After a failed attempt: a 429 pauses every caller of the key on the shared limiter (for
        the wait the retry policy would take), and this caller then waits there too, not twice."""
        if self._limiter is None or exc.status != 429:
            return exc
        wait = self.retry.wait(attempt, exc)
        self._limiter.pause(wait, self._who)
        return TransientError(
            f"{exc} (every caller of this key paused {wait:.2f} s)", status=exc.status, retry_after=0.0
        )

    def _attempts(
        self, send: Send, batch: Sequence[str], end: float | None, hold: Hold | None
    ) -> Callable[[], Awaitable[list[float]]]:
        """One batch's attempts for ``retry.acall``: each waits for the limiter, is counted, and
        counts what it billed."""
        tries = 0

        async def attempt() -> list[float]:
            nonlocal tries
            tries += 1
            ticket: Ticket | None = None
            sent = False

            async def gate() -> None:
                nonlocal ticket, sent
                ticket = await self._ticket(batch, end)
                self._sent()
                sent = True

            try:
                answer = await send(batch, gate)
            except BaseException as exc:  # cancelled and deadlines included: sent is sent
                if sent:
                    self._lost(exc, batch, hold)
                if isinstance(exc, TransientError):
                    raise self._failed(exc, tries) from None
                raise
            return self._answered(answer, batch, ticket, hold)

        return attempt

    def _attempts_sync(
        self,
        send: Callable[[Sequence[str]], Answer],
        batch: Sequence[str],
        end: float | None,
        hold: Hold | None,
    ) -> Callable[[], list[float]]:
        """:meth:`_attempts` for ``retry.call`` (an injected sync SDK client)."""
        tries = 0

        def attempt() -> list[float]:
            nonlocal tries
            tries += 1
            ticket = self._ticket_sync(batch, end)
            self._sent()
            try:
                answer = send(batch)
            except BaseException as exc:
                self._lost(exc, batch, hold)
                if isinstance(exc, TransientError):
                    raise self._failed(exc, tries) from None
                raise
            return self._answered(answer, batch, ticket, hold)

        return attempt

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
        if status >= 400:
            return _ErrorAnswer(message, status=status)
        return BackendError(message)  # a success the client could not read: it was served

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
        batches = self._batches(texts)
        with self._held(batches) as hold:
            async with bounded(self.deadline, self._who) as end:
                send = await self._sender(query, end)
                attempts = [
                    self.retry.acall(self._attempts(send, b, end, hold), end=end, who=self._who)
                    for b in batches
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
            "rate_limit": self.rate_limit,
            "document_template": self.document_template,
            **own,
        }
        return (_rebuild, (type(self), args, settings))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()}, api_key={'set' if self._key else None})"


def _left(end: float | None) -> float | None:
    """Seconds left before the ``time.monotonic()`` deadline ``end`` (None: no deadline)."""
    return None if end is None else end - time.monotonic()
