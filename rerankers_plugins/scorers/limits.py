"""Rate limits shared by every caller of an API key, what the API calls spend, and budgets.

* :class:`RateLimit`: ``requests_per_minute`` and / or ``units_per_minute`` (Cohere search units),
  given to an API scorer as ``rate_limit=``. Every scorer object built with the same API key and
  base URL in the process shares one limiter, whatever thread or event loop calls it.
* :class:`Usage`: what calls spent (requests, search units, tokens); ``scorer.usage`` reads a
  scorer's running total, ``scorer.reset_usage()`` starts it again, and :func:`collect_usage`
  (which ``explain`` uses) gathers what a block of code spent, per backend.
* :class:`Clock`: the time the limiter waits on (the system clock by default; tests inject a fake).

**The limiter** is a sliding-window log: in any window of 60 seconds, at most
``requests_per_minute`` requests start and at most ``units_per_minute`` units are spent. A request
takes the earliest start that keeps that true after every start already granted (first come,
first served) and waits for it; every attempt goes through it, retries included. A 429 answer
pauses every caller of the key (for its ``Retry-After``, capped by the retry policy's
``max_retry_after``, or the policy's back-off without one). A request whose start would come at or
after its call's deadline is refused at once, without being sent, with
:class:`~rerankers_plugins.errors.DeadlineExceeded` (so ``on_error="keep_order"`` falls back).

The limiters live in a process-wide table keyed by the SHA-256 of the API key and the base URL
(or, for an injected SDK client, by a token that client holds for its lifetime): never the key
itself. A key's limiter lives as long as a scorer holds it **or** it holds state that matters: a
start inside its window (granted or waiting) or a pause in force. So an app that builds its
reranker per request (``get_scorer``, ``from_spec``, the adapters) still waits for the requests
of the scorers before it, after they are garbage-collected. Once no scorer holds it and its window
is empty and no pause is in force, it is forgotten (the next scorer of the key starts a fresh one,
with whatever limit it asks for). While it lives, a scorer asking for other limits for the same
key and URL is a :class:`~rerankers_plugins.errors.ConfigError` naming both (replacing it would
split the key between two limiters). One ``threading.Lock`` guards each limiter; it is never held
across a sleep or an ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import itertools
import logging
import math
import numbers
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BudgetExceeded, ConfigError, DeadlineExceeded

__all__ = [
    "SYSTEM_CLOCK",
    "WINDOW",
    "Budget",
    "Clock",
    "Hold",
    "Limiter",
    "RateLimit",
    "SystemClock",
    "Ticket",
    "Usage",
    "UsageCounter",
    "UsageLog",
    "collect_usage",
    "limiter_identity",
    "shared_limiter",
    "usage_from",
]

logger = logging.getLogger(__name__)

#: the sliding window of every limit, in seconds
WINDOW = 60.0


# -- clocks ------------------------------------------------------------------------------------------


@runtime_checkable
class Clock(Protocol):
    """The time a limiter reads and waits on: ``monotonic()`` seconds, ``sleep(s)`` (sync
    callers) and ``await asleep(s)`` (async callers)."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class SystemClock:
    """``time.monotonic``, ``time.sleep`` and ``asyncio.sleep`` (every instance is equal)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


SYSTEM_CLOCK = SystemClock()


# -- the limit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests_per_minute`` requests and ``units_per_minute`` units (Cohere search
    units: one per query of up to 100 documents) in any 60-second window, for every caller of one
    API key and base URL in the process.

    Each is an int >= 1 or None (no limit on it); at least one must be set, else ConfigError.
    ``clock`` is what the limiter waits on (tests inject a fake one); it takes no part in the
    scores, and two limits of one key must use the same clock.

    >>> RateLimit(requests_per_minute=10)
    RateLimit(requests_per_minute=10, units_per_minute=None)
    """

    requests_per_minute: int | None = None
    units_per_minute: int | None = None
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "units_per_minute"):
            as_int(getattr(self, name), f"RateLimit.{name}", minimum=1, allow_none=True)
        if self.requests_per_minute is None and self.units_per_minute is None:
            raise ConfigError(
                "RateLimit needs requests_per_minute and / or units_per_minute (each an int >= 1)"
            )
        if not isinstance(self.clock, Clock):
            raise ConfigError(
                f"RateLimit.clock must have monotonic(), sleep(s) and async asleep(s), got {self.clock!r}"
            )

    def describe(self) -> str:
        """``"10 requests and 100 units per minute"``: for messages."""
        parts = []
        if self.requests_per_minute is not None:
            parts.append(f"{self.requests_per_minute} requests")
        if self.units_per_minute is not None:
            parts.append(f"{self.units_per_minute} units")
        return " and ".join(parts) + " per minute"


def check_rate_limit(value: Any) -> RateLimit | None:
    """``value`` when it is a :class:`RateLimit` or None; ConfigError otherwise."""
    if value is None or isinstance(value, RateLimit):
        return value
    raise ConfigError(f"rate_limit must be a RateLimit(...) or None, got {value!r}")


# -- the limiter -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Ticket:
    """One request's start on a :class:`Limiter`, granted or waiting: when, and its units."""

    at: float
    cost: int


class Limiter:
    """The sliding-window log of one API key and URL (see the module docstring); built by
    :func:`shared_limiter`, never directly by users.

    :meth:`acquire` (async) and :meth:`acquire_sync` wait for a request's start and return its
    ticket; :meth:`settle` corrects its units once the answer says what was billed; :meth:`pause`
    holds every caller back after a 429.
    """

    def __init__(self, limit: RateLimit, label: str, identity: str | None = None) -> None:
        self.limit = limit
        self.clock = limit.clock
        self.label = label
        #: its key in the process's table (None: built directly, in no table)
        self.identity = identity
        self._lock = threading.Lock()
        self._log: deque[Ticket] = deque()  # sorted by ``at``: every start is placed after the last
        self._paused_until = -math.inf

    # -- under the lock ------------------------------------------------------------------------------

    def _earliest(self, cost: int, now: float) -> float:
        """The earliest start >= now, after every start in the log, that keeps both limits."""
        log = self._log
        while log and log[0].at + WINDOW <= now:  # out of every window from now on
            log.popleft()
        t = max(now, self._paused_until, log[-1].at if log else now)
        n = self.limit.requests_per_minute
        if n is not None and len(log) >= n:
            t = max(t, log[-n].at + WINDOW)  # the n-th latest start must leave the window first
        u = self.limit.units_per_minute
        if u is not None:
            total = sum(s.cost for s in log) + cost
            for s in log:  # oldest first: each that must leave the window moves the start later
                if total <= u:
                    break
                t = max(t, s.at + WINDOW)
                total -= s.cost
        return t

    def _place(self, cost: int, deadline_at: float | None, who: str, start: Ticket | None = None) -> Ticket:
        """Append a start of ``cost`` units at the earliest time it fits (``start`` itself when
        given: a ticket placed again); DeadlineExceeded when that is at or past ``deadline_at``."""
        now = self.clock.monotonic()
        u = self.limit.units_per_minute
        if u is not None and cost > u:
            raise ConfigError(
                f"{who}: one request costs {cost} units, more than the rate limit of {u} units per "
                "minute allows: send fewer documents per request (batch_size) or raise units_per_minute"
            )
        t = self._earliest(cost, now)
        if deadline_at is not None and t >= deadline_at:
            why = (
                "every caller of this key is paused after an HTTP 429"
                if t == self._paused_until
                else f"the rate limit ({self.limit.describe()} for this key)"
            )
            raise DeadlineExceeded(
                f"{who}: {why}: the next request could start in {t - now:.1f} s, at or past the "
                f"call's deadline ({max(deadline_at - now, 0.0):.1f} s left); not sent"
            )
        if start is None:
            start = Ticket(t, cost)
        start.at = t
        self._log.append(start)
        return start

    def _remove(self, start: Ticket) -> None:
        with contextlib.suppress(ValueError):
            self._log.remove(start)

    def _wait(self, start: Ticket, deadline_at: float | None, who: str) -> float:
        """Seconds until ``start`` may go (<= 0: now); a pause set after it was placed moves it."""
        with self._lock:
            if self._paused_until > start.at:
                self._remove(start)
                self._place(start.cost, deadline_at, who, start)  # placed again, after the pause
            return start.at - self.clock.monotonic()

    def _reserve(self, cost: int, remaining: float | None, who: str) -> tuple[Ticket, float | None]:
        with self._lock:
            now = self.clock.monotonic()
            deadline_at = None if remaining is None else now + remaining
            placed = self._place(cost, deadline_at, who), deadline_at
        _keep(self)  # it now holds a start: the table keeps it, whoever else lets it go
        return placed

    def idle(self) -> bool:
        """Whether it holds nothing that matters: no start inside its window (granted or
        waiting) and no pause in force."""
        with self._lock:
            now = self.clock.monotonic()
            return (not self._log or self._log[-1].at + WINDOW <= now) and self._paused_until <= now

    # -- public ---------------------------------------------------------------------------------------

    async def acquire(self, cost: int = 0, *, remaining: float | None = None, who: str = "request") -> Ticket:
        """Wait until a request of ``cost`` units may start; ``remaining``: seconds left before the
        call's deadline (a start at or past it raises DeadlineExceeded at once, nothing sent)."""
        start, deadline_at = self._reserve(cost, remaining, who)
        try:
            while (wait := self._wait(start, deadline_at, who)) > 0:
                await self.clock.asleep(wait)
        except BaseException:  # cancelled, or refused after a pause: the start was never used
            with self._lock:
                self._remove(start)
            raise
        return start

    def acquire_sync(self, cost: int = 0, *, remaining: float | None = None, who: str = "request") -> Ticket:
        """:meth:`acquire` for sync callers (waits with ``clock.sleep``)."""
        start, deadline_at = self._reserve(cost, remaining, who)
        try:
            while (wait := self._wait(start, deadline_at, who)) > 0:
                self.clock.sleep(wait)
        except BaseException:
            with self._lock:
                self._remove(start)
            raise
        return start

    def settle(self, start: Ticket, units: int) -> None:
        """The request of ``start`` was billed ``units``: later requests count those instead of
        the estimate."""
        with self._lock:
            start.cost = units

    def pause(self, seconds: float, who: str) -> None:
        """Hold every caller of this key back for ``seconds`` (a 429 said so)."""
        with self._lock:
            until = self.clock.monotonic() + max(seconds, 0.0)
            if until <= self._paused_until:
                return
            self._paused_until = until
        _keep(self)
        logger.warning(
            "%s: HTTP 429: every caller of this key waits %.2f s before its next request", who, seconds
        )

    @property
    def paused_until(self) -> float:
        """The clock time before which no caller of this key sends (after a 429); -inf: never paused."""
        with self._lock:
            return self._paused_until

    def starts(self) -> list[float]:
        """The start times in the log (the last minute's, and those waiting): for tests."""
        with self._lock:
            return [s.at for s in self._log]


#: every limiter a scorer holds (weakly: a scorer's reference keeps it here) ...
_LIMITERS: weakref.WeakValueDictionary[str, Limiter] = weakref.WeakValueDictionary()
#: ... and, strongly, every one that held a start or a pause (dropped once :meth:`Limiter.idle`)
_ACTIVE: dict[str, Limiter] = {}
_LIMITERS_LOCK = threading.Lock()  # taken before a limiter's own lock, never inside it
#: a token per injected client, for its lifetime (an ``id()`` is reused once the client is gone)
_CLIENT_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_CLIENT_COUNT = itertools.count()


def _keep(limiter: Limiter) -> None:
    """Keep ``limiter`` in the table while it holds a start or a pause (called outside its lock)."""
    if limiter.identity is not None:
        with _LIMITERS_LOCK:
            _ACTIVE[limiter.identity] = limiter


def _client_token(client: Any) -> str:
    with _LIMITERS_LOCK:
        try:
            token = _CLIENT_TOKENS.get(client)
            if token is None:
                token = _CLIENT_TOKENS[client] = f"client-{next(_CLIENT_COUNT)}"
        except TypeError:  # not weakly referable or not hashable: its id, for as long as it lives
            token = f"id-{id(client)}"
    return token


def limiter_identity(key: str | None, url: str | None, clients: Iterable[Any] = ()) -> str:
    """The table key of one API key and base URL: a SHA-256 digest (never the key itself); with
    injected clients, their identities instead of the key (they hold their own)."""
    held = [c for c in clients if c is not None]
    who = "clients:" + ",".join(_client_token(c) for c in held) if held else f"key:{key or ''}"
    return hashlib.sha256(f"{who}\x00{url or ''}".encode()).hexdigest()


def shared_limiter(identity: str, limit: RateLimit, label: str) -> Limiter:
    """The process's limiter of ``identity`` (made on first use, or once the last one was
    forgotten: see the module docstring); ConfigError when it lives with another limit."""
    with _LIMITERS_LOCK:
        # forget what no longer matters (no reference may outlive this: the table is weak)
        for name in [name for name, active in _ACTIVE.items() if active.idle()]:
            del _ACTIVE[name]
        limiter = _LIMITERS.get(identity)  # None unless a scorer holds it or it is active
        if limiter is None:
            limiter = Limiter(limit, label, identity)
            _LIMITERS[identity] = limiter
            return limiter
    if limiter.limit != limit:
        clock = " (and another clock)" if limiter.limit.clock != limit.clock else ""
        raise ConfigError(
            f"{label}: another scorer in this process uses this API key and URL with {limiter.limit!r}, "
            f"this one asks for {limit!r}{clock}; every caller of one key shares one limiter: give "
            "them the same RateLimit (or let the other scorers go and wait until none of their "
            "requests is inside the last minute)"
        )
    return limiter


# -- usage -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What API calls spent: requests sent (retries included), Cohere search units, and tokens
    where the API or the framework reports them (0 where it does not).

    >>> Usage(requests=1, search_units=1) + Usage(requests=2, input_tokens=10, total_tokens=10)
    Usage(requests=3, search_units=1, input_tokens=10, output_tokens=0, total_tokens=10)
    """

    requests: int = 0
    search_units: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            *(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))
        )

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


def _count(value: Any) -> int | None:
    """A reported count as an int (an API's float too), or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return round(number) if math.isfinite(number) and number >= 0 else None


def _read(source: Any, *names: str) -> int | None:
    for name in names:
        value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
        counted = _count(value)
        if counted is not None:
            return counted
    return None


def usage_from(source: Any) -> Usage | None:
    """The counts of an API's usage report (a mapping or an object): ``search_units``,
    ``input_tokens`` / ``prompt_tokens``, ``output_tokens`` / ``completion_tokens``,
    ``total_tokens`` (input + output when absent). None when it reports none; anything else a
    server sends (a string, a negative number) is ignored: the report is untrusted.

    >>> usage_from({"prompt_tokens": 12, "completion_tokens": 3})
    Usage(requests=0, search_units=0, input_tokens=12, output_tokens=3, total_tokens=15)
    >>> usage_from({"id": "x"}) is None
    True
    """
    if source is None:
        return None
    units = _read(source, "search_units")
    given = _read(source, "input_tokens", "prompt_tokens")
    out = _read(source, "output_tokens", "completion_tokens")
    total = _read(source, "total_tokens")
    if units is None and given is None and out is None and total is None:
        return None
    if total is None:
        total = (given or 0) + (out or 0)
    return Usage(search_units=units or 0, input_tokens=given or 0, output_tokens=out or 0, total_tokens=total)


class UsageLog:
    """What the code inside one :func:`collect_usage` spent, per backend name (thread-safe)."""

    def __init__(self, parent: UsageLog | None) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        self._spent: dict[str, Usage] = {}

    def add(self, who: str, usage: Usage) -> None:
        with self._lock:
            self._spent[who] = self._spent.get(who, Usage()) + usage
        if self._parent is not None:
            self._parent.add(who, usage)

    def by_backend(self) -> dict[str, Usage]:
        """``{backend name: Usage}``, a copy."""
        with self._lock:
            return dict(self._spent)

    def total(self) -> Usage:
        return sum(self.by_backend().values(), Usage())


_COLLECTING: contextvars.ContextVar[UsageLog | None] = contextvars.ContextVar(
    "rerankers_plugins_usage", default=None
)


@contextlib.contextmanager
def collect_usage() -> Iterator[UsageLog]:
    """Gather what the API calls made inside spend, per backend name (nested collections each
    see their own and pass it on to the outer one). The log is carried by a context variable: it
    follows asyncio tasks, ``asyncio.to_thread``, the sync methods' worker threads and the LLM
    rerankers' thread pools.

    >>> from rerankers_plugins.scorers.limits import UsageCounter
    >>> counter = UsageCounter()
    >>> with collect_usage() as spent:
    ...     counter.add(Usage(requests=1, search_units=2), "cohere:rerank-v3.5")
    >>> spent.by_backend()["cohere:rerank-v3.5"].search_units
    2
    """
    log = UsageLog(_COLLECTING.get())
    token = _COLLECTING.set(log)
    try:
        yield log
    finally:
        _COLLECTING.reset(token)


class UsageCounter:
    """A scorer's running total (thread-safe); each addition also goes to the collection the
    caller runs in (:func:`collect_usage`). A copy (``copy.deepcopy``, a pickle) starts with the
    same total and counts on its own from there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Usage()

    def __getstate__(self) -> dict[str, Any]:
        return {"total": self.get()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._total = state["total"]

    def add(self, usage: Usage, who: str) -> None:
        if not usage:
            return
        with self._lock:
            self._total = self._total + usage
        log = _COLLECTING.get()
        if log is not None:
            log.add(who, usage)

    def get(self) -> Usage:
        with self._lock:
            return self._total

    def reset(self) -> Usage:
        """Start again from zero; returns what was counted."""
        with self._lock:
            spent, self._total = self._total, Usage()
            return spent


# -- budgets -----------------------------------------------------------------------------------------


class Budget:
    """At most ``limit`` units (search units, tokens) spent, checked before each call is sent.

    :meth:`hold` reserves a call's estimate, refusing (:class:`BudgetExceeded`, nothing sent)
    when what was spent, what calls in flight hold and the estimate would pass the limit; the
    call then spends what was billed (:meth:`Hold.spend`) and gives back the rest
    (:meth:`Hold.close`). A request that was sent and never answered spends its estimate.

    A copy (``copy.deepcopy``, a pickle) starts with what was spent, nothing held (the holds
    belong to the original's calls in flight), and spends on its own from there.
    """

    def __init__(self, limit: int, unit: str, option: str) -> None:
        self.limit = limit
        self.unit = unit
        self.option = option
        self._lock = threading.Lock()
        self.spent = 0
        self.held = 0

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"limit": self.limit, "unit": self.unit, "option": self.option, "spent": self.spent}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.held = 0

    def hold(self, estimate: int, who: str, how: str = "") -> Hold:
        with self._lock:
            if self.spent + self.held + estimate > self.limit:
                flight = f", {self.held} held by calls in flight" if self.held else ""
                raise BudgetExceeded(
                    f"{who}: {self.option}={self.limit} would be passed: {self.spent} {self.unit} "
                    f"spent{flight}, and this call needs about {estimate}{how}; nothing was sent. "
                    f"reset_usage() starts a new budget; or raise {self.option}",
                    spent=self.spent,
                    limit=self.limit,
                    needed=estimate,
                )
            self.held += estimate
        return Hold(self, estimate)

    def reset(self) -> None:
        with self._lock:
            self.spent = 0


class Hold:
    """One call's reservation on a :class:`Budget`."""

    def __init__(self, budget: Budget, held: int) -> None:
        self._budget = budget
        self._held = held

    def spend(self, actual: int, estimate: int) -> None:
        """A request estimated at ``estimate`` units was billed ``actual``."""
        with self._budget._lock:
            released = min(estimate, self._held)
            self._held -= released
            self._budget.held -= released
            self._budget.spent += actual

    def close(self) -> None:
        """Give back what was held and not spent (a request refused or answered with an error
        spends nothing)."""
        with self._budget._lock:
            self._budget.held -= self._held
            self._held = 0
