"""One worker per shared local model: concurrent requests packed into the same batches.

A local scorer shared by many callers (a web server's request handlers, a chat engine's sessions)
would otherwise run each request's forward passes in the caller's own thread: the requests fight
over the cores (or the GPU) and all finish together, late. Here a request is *planned* in the
caller's thread (tokenized, validated: bad input fails there, for that caller only) into
:class:`Unit` s, and one worker thread per model computes the units of every waiting request:

- **Batches.** Whenever the model is free the worker cuts the next batch from the head of the
  queue: the first request's units, longest first, then the next request's, while the batch fits
  the scorer's ``batch_size`` and padded-token budget (items x longest item), all of one kind.
  Each request's units are sorted by token length (in runs of ``window``), so a batch is padded
  little and a request alone is batched exactly as a direct call is (:func:`length_sorted_batches`).
  Nothing waits for company: an idle model starts on a lone request at once, and the request at
  the head finishes first (first come first served, not all together).
- **Order.** First come first served; requests with a deadline go first, earliest deadline first.
  **Fairness:** once a request has had ``fair_share`` units computed, every request that has had
  fewer goes before it, so one request with 1,000 candidates holds small ones back for at most
  ``fair_share`` units, not for its whole duration.
- **Deadlines and cancellation.** A request whose deadline passed, or whose caller stopped waiting
  (a cancelled asyncio task, an interrupted or timed-out sync call), has its units removed before
  each batch: they are never computed.
- **Isolation.** A batch that raises is split by request and retried, so only the request that owns
  the failing input gets the error. An error in the scheduler itself fails the waiting requests with
  a :class:`BackendError`; the worker goes on serving.
- **Backpressure.** Past ``max_queue_tokens`` waiting tokens a new request fails at once with
  :class:`~rerankers_plugins.errors.Overloaded`, which carries an estimated ``retry_after``.

Scores never depend on which requests share a batch: every unit is computed on its own row (padding
masked), so a request's scores equal its scores alone up to floating-point summation order.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BackendError, ConfigError, DeadlineExceeded, Overloaded
from rerankers_plugins.ops.batching import length_sorted_batches

__all__ = [
    "Plan",
    "QueueStats",
    "RequestTiming",
    "Rounds",
    "RunBatch",
    "Scheduler",
    "SchedulerOptions",
    "Unit",
    "compute_units",
    "in_rounds",
    "indices_by",
    "late",
    "run_plan",
]

logger = logging.getLogger(__name__)

_K = TypeVar("_K", bound=Hashable)


def late(who: str, deadline: float | None) -> DeadlineExceeded:
    """The error of a call that was not scored within its ``deadline`` (seconds)."""
    return DeadlineExceeded(f"{who}: not scored within the deadline of {deadline:g} s")


@dataclass(frozen=True)
class Unit:
    """One piece of a request the model computes inside a batch: ``data`` (what the scorer's batch
    function reads: a token row, a text), ``tokens`` (its length, for batching and the queue limit)
    and ``kind`` (units share a batch only with units of the same kind: ``"pair"``, ``"query"``,
    ``"document"``)."""

    data: Any
    tokens: int
    kind: str = "pair"


def _floats(outputs: list[Any]) -> list[float]:
    return [float(x) for x in outputs]


@dataclass(frozen=True)
class Plan:
    """A request made ready for the model: its units, and ``finish(outputs)`` turning the units'
    outputs (in unit order) into the request's scores (in text order); by default the outputs are
    the scores (one per text, as for cross-encoders)."""

    units: Sequence[Unit]
    finish: Callable[[list[Any]], list[float]] = _floats


#: ``run(kind, data, owners) -> outputs``: one batch, one output per item, in order; ``owners``
#: tells which items belong to the same request (a causal reranker shares their prompt's prefix)
RunBatch = Callable[[str, list[Any], list[Hashable]], list[Any]]


@dataclass(frozen=True)
class SchedulerOptions:
    """How a local scorer's worker batches concurrent requests (``scheduler=`` of every local scorer:
    ``True`` for these defaults, ``False`` to score in the caller's thread, or a mapping of the fields).

    Args:
        window: a request's units (pairs; query and document encodings for bi-encoders) are sorted
            by token length in runs of this many before they are batched; the default sorts any
            request of up to 1,024 candidates whole, as a direct call does.
        fair_share: units a request gets before every request that has had fewer goes first.
        max_queue_tokens: waiting tokens beyond which a new request fails with ``Overloaded``
            (None: no limit). A request alone is always accepted.
        threads: torch's intra-op threads, set (``torch.set_num_threads``, which is process-wide)
            once when the workers start; None leaves torch's setting. Only the workers compute, so
            however many threads call, at most ``streams`` x threads compute at once.
        streams: batches computed at once, by that many worker threads taking batches from the one
            queue in order (None: 1). On a 2-core CPU two streams of one torch thread each
            (``{"streams": 2, "threads": 1}``) computed 1.5x the pairs per second of one stream of
            two threads, but two streams of two threads each oversubscribe the cores, and
            ``threads`` is process-wide: measure before choosing (docs/benchmarks.md).
    """

    window: int = 1024
    fair_share: int = 256
    max_queue_tokens: int | None = 1 << 20
    threads: int | None = None
    streams: int | None = None

    def __post_init__(self) -> None:
        as_int(self.window, "scheduler window", minimum=1)
        as_int(self.fair_share, "scheduler fair_share", minimum=1)
        as_int(self.max_queue_tokens, "scheduler max_queue_tokens", minimum=1, allow_none=True)
        as_int(self.threads, "scheduler threads", minimum=1, allow_none=True)
        as_int(self.streams, "scheduler streams", minimum=1, allow_none=True)

    @classmethod
    def of(cls, value: bool | Mapping[str, Any] | SchedulerOptions | None) -> SchedulerOptions | None:
        """``scheduler=`` as given to a scorer: None when scheduling is off."""
        if value is False or value is None:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"scheduler: unknown option(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise ConfigError(
            f"scheduler must be True, False or a mapping of {SchedulerOptions.__name__} fields, got {value!r}"
        )


@dataclass(frozen=True)
class RequestTiming:
    """One finished request: seconds queued before its first batch, seconds of model compute
    attributed to it (its share of each batch's tokens), its units and the batches they were in."""

    wait_s: float
    compute_s: float
    units: int
    batches: int
    outcome: str  #: "done", "failed", "cancelled", "expired"


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a scheduler (``scorer.queue_stats()``)."""

    waiting_requests: int
    waiting_units: int
    waiting_tokens: int
    batches: int  #: batches computed so far
    units: int  #: units computed so far
    tokens: int  #: tokens computed so far (unpadded)
    padded_tokens: int  #: batch rows x longest row, summed
    last_batch_units: int
    last_batch_tokens: int
    max_batch_requests: int  #: the most requests that shared one batch
    tokens_per_second: float | None  #: recent model throughput (the basis of ``retry_after``)
    recent: tuple[RequestTiming, ...]  #: the last finished requests, oldest first


@dataclass(eq=False)
class _Request:
    seq: int
    units: Sequence[Unit]
    deadline: float | None  #: time.monotonic() end
    future: concurrent.futures.Future[list[Any]]
    submitted: float
    outputs: list[Any] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  #: unit indices in the order they are computed
    taken: int = 0  #: units handed to a batch (``order[:taken]``)
    left: int = 0  #: units not computed yet
    started: float | None = None
    compute_s: float = 0.0
    batches: int = 0
    ended: bool = False

    @property
    def waiting_tokens(self) -> int:
        return sum(self.units[i].tokens for i in self.order[self.taken :])


def indices_by(keys: Iterable[_K]) -> dict[_K, list[int]]:
    """Positions of each key, keys in first-appearance order.

    >>> indices_by(["pair", "query", "pair"])
    {'pair': [0, 2], 'query': [1]}
    """
    out: dict[_K, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def _longest_first(units: Sequence[Unit], window: int) -> list[int]:
    """Unit indices grouped by kind (first appearance), each group longest first in runs of
    ``window`` (stable): for a request of at most ``window`` units of a kind, the order
    :func:`length_sorted_batches` gives, so a request alone is batched exactly as a direct call.

    >>> _longest_first([Unit("a", 3), Unit("b", 9), Unit("q", 2, "query"), Unit("c", 5)], window=8)
    [1, 3, 0, 2]
    """
    out: list[int] = []
    for members in indices_by(u.kind for u in units).values():
        for start in range(0, len(members), window):
            out += sorted(members[start : start + window], key=lambda i: -units[i].tokens)
    return out


def _owners(items: Sequence[tuple[_Request, int]]) -> list[_Request]:
    return list(dict.fromkeys(r for r, _ in items))


class Scheduler:
    """One worker thread computing every submitted request's units (see the module's docstring).

    ``run`` is held weakly (a bound method of the scorer): the scheduler never keeps its scorer
    alive, and when the scorer is collected the waiting requests end with a :class:`BackendError`.
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        name: str,
        batch_size: int,
        max_batch_tokens: int | None,
        options: SchedulerOptions,
    ) -> None:
        self._run: Callable[[], RunBatch | None] = (
            weakref.WeakMethod(run) if hasattr(run, "__self__") else (lambda: run)
        )
        self.name = name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.options = options
        #: batches computed at once (worker threads taking batches from the one queue, in order)
        self.streams = options.streams or 1
        self._reset()

    def _reset(self) -> None:
        """Fresh state (also in a forked child, where the parent's worker thread does not exist)."""
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.RLock())
        self._waiting: list[_Request] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed: str | None = None
        self._batches = self._units = self._tokens = self._padded = 0
        self._last = (0, 0)
        self._most_shared = 0
        self._rate: float | None = None
        self._recent: collections.deque[RequestTiming] = collections.deque(maxlen=64)

    # -- callers ----------------------------------------------------------------------------------

    def submit(self, plan: Plan, deadline: float | None = None) -> concurrent.futures.Future[list[Any]]:
        """Queue ``plan``; its future holds the units' outputs. ``deadline``: seconds from now."""
        if os.getpid() != self._pid:
            self._reset()
        now = time.monotonic()
        future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        units = list(plan.units)
        if not units:
            future.set_result([])
            return future
        request = _Request(
            seq=0,
            units=units,
            deadline=None if deadline is None else now + deadline,
            future=future,
            submitted=now,
            outputs=[None] * len(units),
            order=_longest_first(units, self.options.window),
            left=len(units),
        )
        with self._cond:
            if self._closed is not None:
                raise BackendError(f"{self.name}: {self._closed}")
            self._check_room(request)
            request.seq = next(self._seq)
            self._waiting.append(request)
            if not self._threads:
                for _ in range(self.streams):
                    thread = threading.Thread(
                        target=_work, args=(self,), name=f"rerankers-plugins-{self.name}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
            self._cond.notify()
        future.add_done_callback(lambda f: self._cancelled(request) if f.cancelled() else None)
        return future

    def _check_room(self, request: _Request) -> None:
        limit = self.options.max_queue_tokens
        if limit is None or not self._waiting:
            return
        queued = sum(r.waiting_tokens for r in self._waiting)
        need = sum(u.tokens for u in request.units)
        if queued + need <= limit:
            return
        rate = self._rate
        retry = queued / (rate * self.streams) if rate else None
        raise Overloaded(
            f"{self.name}: {queued} tokens are waiting (limit {limit}); "
            + (f"retry in about {retry:.1f} s" if retry is not None else "retry later"),
            retry_after=retry,
        )

    def result(self, plan: Plan, deadline: float | None = None) -> list[Any]:
        """Submit ``plan`` and wait for its outputs (sync callers). An interrupted or timed-out
        wait withdraws the request, so its units are not computed."""
        future = self.submit(plan, deadline)
        try:
            return future.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            if future.cancel() or not future.done():
                raise late(self.name, deadline) from None
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def aresult(self, plan: Plan, deadline: float | None = None) -> list[Any]:
        """As :meth:`result` for a coroutine: cancelling the task withdraws the request."""
        future = self.submit(plan, deadline)
        try:
            if deadline is None:
                return await asyncio.wrap_future(future)
            async with asyncio.timeout(deadline):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()
            raise late(self.name, deadline) from None
        except BaseException:
            future.cancel()
            raise

    def stats(self) -> QueueStats:
        with self._cond:
            waiting = [r for r in self._waiting if not r.ended]
            return QueueStats(
                waiting_requests=len(waiting),
                waiting_units=sum(len(r.units) - r.taken for r in waiting),
                waiting_tokens=sum(r.waiting_tokens for r in waiting),
                batches=self._batches,
                units=self._units,
                tokens=self._tokens,
                padded_tokens=self._padded,
                last_batch_units=self._last[0],
                last_batch_tokens=self._last[1],
                max_batch_requests=self._most_shared,
                tokens_per_second=self._rate,
                recent=tuple(self._recent),
            )

    def close(self, reason: str = "the scorer was closed") -> None:
        """End every waiting request with a BackendError naming ``reason``; later submits fail."""
        with self._cond:
            if self._closed is None:
                self._closed = reason
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for r in waiting:
            self._end(r, BackendError(f"{self.name}: {reason} with this request waiting"), "failed")

    # -- the worker -------------------------------------------------------------------------------

    def _settle(self, request: _Request, how: str) -> bool:
        """Mark ``request`` ended and out of the queue, once; False when it had ended already."""
        with self._cond:
            if request.ended:
                return False
            request.ended = True
            with contextlib.suppress(ValueError):
                self._waiting.remove(request)
            self._record(request, how)
            return True

    def _cancelled(self, request: _Request) -> None:
        self._settle(request, "cancelled")

    def _end(self, request: _Request, outcome: BaseException | list[Any], how: str) -> None:
        """Settle ``request`` with ``outcome`` once (its caller may have cancelled it already)."""
        if not self._settle(request, how):
            return
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    def _record(self, request: _Request, how: str) -> None:
        wait = (request.started or time.monotonic()) - request.submitted
        timing = RequestTiming(wait, request.compute_s, len(request.units), request.batches, how)
        self._recent.append(timing)
        logger.debug(
            "%s: request %d %s after %.3f s queued, %.3f s compute, %d units in %d batches",
            self.name,
            request.seq,
            how,
            timing.wait_s,
            timing.compute_s,
            timing.units,
            timing.batches,
        )

    def _expired(self, request: _Request, now: float) -> bool:
        if request.deadline is None or now < request.deadline:
            return False
        self._end(request, DeadlineExceeded(f"{self.name}: deadline passed while queued"), "expired")
        return True

    def _take_batch(self) -> tuple[str, list[tuple[_Request, int]]]:
        """The next batch (caller holds the lock): units of the waiting requests in priority order,
        each request's longest first, while the batch fits ``batch_size`` and the padded-token
        budget; all of one kind (the first request's next one). Each request is first taken up to its
        fair share, then, if room is left, beyond it."""
        share, size, budget = self.options.fair_share, self.batch_size, self.max_batch_tokens
        order = sorted(
            (r for r in self._waiting if r.taken < len(r.units)),
            key=lambda r: (r.taken >= share, r.deadline if r.deadline is not None else math.inf, r.seq),
        )
        if not order:
            return "", []
        kind = order[0].units[order[0].order[order[0].taken]].kind
        batch: list[tuple[_Request, int]] = []
        width = 0
        for capped in (True, False):
            for r in order:
                stop = min(len(r.units), max(r.taken, share)) if capped else len(r.units)
                while r.taken < stop:
                    i = r.order[r.taken]
                    unit = r.units[i]
                    if unit.kind != kind:
                        break
                    wider = max(width, unit.tokens, 1)
                    if batch and (
                        len(batch) >= size or (budget is not None and (len(batch) + 1) * wider > budget)
                    ):
                        return kind, batch
                    batch.append((r, i))
                    width = wider
                    r.taken += 1
        return kind, batch

    def serve_once(self) -> bool:
        """Wait for work and compute one batch; False once closed. (The worker's loop body.)"""
        with self._cond:
            while self._closed is None and not any(r.taken < len(r.units) for r in self._waiting):
                self._cond.wait()
            if self._closed is not None:
                return False
            now = time.monotonic()
            for r in list(self._waiting):
                self._expired(r, now)
            kind, batch = self._take_batch()
            # taken requests stay in _waiting (for stats and close) until settled
            if any(r.taken < len(r.units) for r in self._waiting):
                self._cond.notify()  # more to do: wake another stream
        if batch:
            self._compute(kind, batch)
        return True

    def _compute(self, kind: str, items: list[tuple[_Request, int]]) -> None:
        run = self._run()
        if run is None:
            self.close("the scorer was garbage-collected")
            return
        start = time.monotonic()
        owners = _owners(items)
        for r in owners:
            if r.started is None:
                r.started = start
        try:
            outputs = run(kind, [r.units[i].data for r, i in items], [r.seq for r, _ in items])
        except Exception as exc:
            if len(owners) == 1:
                logger.debug("%s: batch of request %d failed: %r", self.name, owners[0].seq, exc)
                self._end(owners[0], exc, "failed")
                return
            # isolate: split by request and retry each half, until the failing request is alone
            half = set(owners[: len(owners) // 2])
            logger.debug("%s: a batch of %d requests failed (%r); splitting it", self.name, len(owners), exc)
            self._compute(kind, [it for it in items if it[0] in half])
            self._compute(kind, [it for it in items if it[0] not in half])
            return
        spent = time.monotonic() - start
        if len(outputs) != len(items):
            error = BackendError(f"{self.name}: {len(outputs)} outputs for a batch of {len(items)}")
            for r in owners:
                self._end(r, error, "failed")
            return
        tokens = sum(r.units[i].tokens for r, i in items)
        done: list[_Request] = []
        with self._cond:  # another stream may be recording a batch of the same requests
            for (r, i), out in zip(items, outputs, strict=True):
                r.outputs[i] = out
                r.left -= 1
                r.compute_s += spent * r.units[i].tokens / max(tokens, 1)
            for r in owners:
                r.batches += 1
                if r.left == 0:
                    done.append(r)
            self._batches += 1
            self._units += len(items)
            self._tokens += tokens
            self._padded += len(items) * max(r.units[i].tokens for r, i in items)
            self._last = (len(items), tokens)
            self._most_shared = max(self._most_shared, len(owners))
            rate = tokens / spent if spent > 0 else None
            if rate is not None:
                self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        logger.debug(
            "%s: batch of %d %s units, %d tokens, %.3f s", self.name, len(items), kind, tokens, spent
        )
        for r in done:
            self._end(r, r.outputs, "done")

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._cond:
            waiting = list(self._waiting)
        error = BackendError(f"{self.name}: the scheduler failed ({type(exc).__name__}: {exc})")
        for r in waiting:
            self._end(r, error, "failed")


def _work(scheduler: Scheduler) -> None:
    """A worker thread: serves batches until its scheduler is closed (by ``close()``, or when its
    scorer is collected). It holds the scheduler, never the scorer. Should it ever end otherwise (a
    ``BaseException`` such as ``SystemExit`` raised by the model), the waiting requests fail and the
    next request starts new workers: nobody is left waiting on a dead thread."""
    if scheduler.options.threads is not None:
        import torch  # a local scorer's worker: torch is installed

        torch.set_num_threads(scheduler.options.threads)
    try:
        while True:
            try:
                if not scheduler.serve_once():
                    return
            except Exception as exc:  # a bug here must never leave callers waiting forever
                logger.exception("%s: scheduler error", scheduler.name)
                scheduler._fail_waiting(exc)
    except BaseException as exc:
        logger.error(
            "%s: a worker ended on %r; waiting requests fail, the next starts a new one", scheduler.name, exc
        )
        with scheduler._cond:
            scheduler._threads = [t for t in scheduler._threads if t is not threading.current_thread()]
        scheduler._fail_waiting(exc)


def compute_units(
    units: Sequence[Unit],
    run: RunBatch,
    batch_size: int,
    max_batch_tokens: int | None,
    deadline: float | None = None,
    who: str = "scorer",
    owners: Sequence[Hashable] | None = None,
) -> list[Any]:
    """The outputs of ``units`` (in their order), computed in the calling thread one kind at a time
    in length-sorted batches; past ``deadline`` seconds, :class:`DeadlineExceeded`. ``owners``
    (one per unit; default: one owner) tells which units belong to the same request."""
    end = None if deadline is None else time.monotonic() + deadline
    owner = [0] * len(units) if owners is None else list(owners)
    outputs: list[Any] = [None] * len(units)
    for kind, members in indices_by(u.kind for u in units).items():
        lengths = [units[j].tokens for j in members]
        for batch in length_sorted_batches(lengths, batch_size, max_batch_tokens):
            if end is not None and time.monotonic() >= end:
                raise late(who, deadline)
            rows = [members[b] for b in batch]
            data = [units[j].data for j in rows]
            for j, o in zip(rows, run(kind, data, [owner[j] for j in rows]), strict=True):
                outputs[j] = o
    return outputs


def run_plan(
    plan: Plan,
    run: RunBatch,
    batch_size: int,
    max_batch_tokens: int | None,
    deadline: float | None = None,
    who: str = "scorer",
) -> list[float]:
    """``plan`` computed in the calling thread (:func:`compute_units`): the scorer's
    ``scheduler=False`` path, and what a request alone gets from the worker."""
    return plan.finish(compute_units(plan.units, run, batch_size, max_batch_tokens, deadline, who))


# -- rounds: a block of requests computed together (batch jobs) --------------------------------------

#: the rounds a thread's scorer calls join, and the thread's place in them (see :class:`Rounds`)
in_rounds: contextvars.ContextVar[tuple[Rounds, int] | None] = contextvars.ContextVar(
    "rerankers_plugins_rounds", default=None
)


@dataclass
class _RoundCall:
    scorer: Any
    plan: Plan
    outputs: list[Any] | None = None
    error: BaseException | None = None


class Rounds:
    """A fixed group of threads (one per request of a batch job's block) whose local-model calls are
    computed together, in rounds: once every thread still running has made its next call (or
    ended), the round's calls to each scorer are computed as one set of units, length-sorted across
    all of them (:func:`compute_units`, each call owned by its thread), and every thread gets its own
    outputs. Which calls make up a round depends only on the threads' own code, never on timing, so
    a block is batched, and scored, the same way on every run and every engine.

    The rounds are computed by the one thread that runs :meth:`serve` (the block's own), so torch
    keeps one pool of worker threads, as with the scheduler's worker. A request thread joins with
    ``in_rounds.set((rounds, index))`` and must call :meth:`leave` when done. Calls to remote
    backends (HTTP, LLMs) are not rounds' business: they run in their own threads meanwhile.
    """

    def __init__(self, threads: int) -> None:
        self._cond = threading.Condition()
        self._live = threads
        self._calls: dict[int, _RoundCall] = {}
        self._broken: BackendError | None = None
        #: rounds computed, and the units they took
        self.rounds = 0
        self.units = 0

    def call(self, index: int, scorer: Any, plan: Plan) -> list[Any]:
        """The outputs of ``plan`` (``scorer``'s units) once its round is computed."""
        call = _RoundCall(scorer, plan)
        with self._cond:
            if self._broken is not None:
                raise self._broken
            if index in self._calls:
                raise BackendError(
                    "a batch job's query made two model calls at once (a strategy running its stages "
                    "concurrently, with their context): the rounds of a block need one call at a time"
                )
            self._calls[index] = call
            self._cond.notify_all()
            while call.outputs is None and call.error is None:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        assert call.outputs is not None
        return call.outputs

    def leave(self) -> None:
        """The calling thread is done: later rounds no longer wait for it."""
        with self._cond:
            self._live -= 1
            self._cond.notify_all()

    def serve(self) -> None:
        """Compute rounds, in this thread, until every request thread has left. Interrupted (Ctrl-C
        in this thread), it ends every waiting and later call with a BackendError first."""
        calls: list[tuple[int, _RoundCall]] = []
        try:
            while True:
                with self._cond:
                    while self._live and (not self._calls or len(self._calls) < self._live):
                        self._cond.wait()
                    if not self._live:
                        return
                    calls = sorted(self._calls.items())
                    self._calls = {}
                self._compute(calls)
                with self._cond:
                    self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                self._broken = BackendError(f"the block's rounds stopped: {type(exc).__name__}")
                for call in [*self._calls.values(), *(c for _, c in calls)]:
                    if call.outputs is None:
                        call.error = self._broken
                self._calls = {}
                self._cond.notify_all()
            raise

    def _compute(self, calls: list[tuple[int, _RoundCall]]) -> None:
        self.rounds += 1
        groups: dict[int, list[tuple[int, _RoundCall]]] = {}
        for owner, call in calls:  # the owner of a call's units: its thread
            groups.setdefault(id(call.scorer), []).append((owner, call))
        for members in groups.values():
            scorer = members[0][1].scorer
            units = [u for _, c in members for u in c.plan.units]
            owners = [o for o, c in members for _ in c.plan.units]
            self.units += len(units)
            try:
                outputs = compute_units(
                    units, scorer._run_batch, scorer.batch_size, scorer.max_batch_tokens, owners=owners
                )
            except Exception as exc:
                for _, c in members:
                    c.error = exc
                continue
            start = 0
            for _, c in members:
                c.outputs = outputs[start : start + len(c.plan.units)]
                start += len(c.plan.units)
