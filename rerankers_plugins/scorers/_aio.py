"""Event loops, threads and deadlines for the scorers that wait on I/O (the HTTP scorers, the
LLM rerankers' SDK calls) and for the strategies that run layers concurrently.

- :class:`LoopLocal`: one async resource (an HTTP client) per running event loop, closed with it.
- :func:`run_sync`: a coroutine from a sync method, on a loop of its own that is closed after
  (in a worker thread when the calling thread already runs a loop); its clients are closed first.
- :func:`in_thread` and :func:`wait_until`: a blocking call the caller can stop waiting on.
- :func:`bounded`, :func:`check_deadline`, :func:`resolve_deadline`: one deadline per call.
- :func:`gather_cancelling`: concurrent awaitables whose siblings are cancelled when one fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from rerankers_plugins._validate import as_real
from rerankers_plugins.errors import DeadlineExceeded

__all__ = [
    "DEFAULT_DEADLINE_FACTOR",
    "LoopLocal",
    "aclose_loop_resources",
    "bounded",
    "check_deadline",
    "gather_cancelling",
    "in_thread",
    "resolve_deadline",
    "run_sync",
    "wait_until",
]

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
        _LOOP_LOCALS.add(self)

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


#: every LoopLocal, so that a loop's resources can be closed together before the loop is
_LOOP_LOCALS: weakref.WeakSet[LoopLocal[Any]] = weakref.WeakSet()


async def aclose_loop_resources() -> None:
    """Close the running loop's resource of every :class:`LoopLocal` (its HTTP clients) now."""
    for local in list(_LOOP_LOCALS):
        await local.aclose()


def _run_in_own_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """``coro`` on a new event loop, its HTTP clients closed before the loop is.

    Neither ``asyncio.run`` nor the loop's shutdown of async generators is relied on: nest_asyncio,
    which LlamaIndex's notebooks apply, replaces ``asyncio.run`` with a version that reuses the
    thread's loop and never closes it, and its loops do not track async generators, so every sync
    call left a loop and its connections open (10 -> 35 open files over 5 calls, and a traceback per
    client at exit)."""

    async def run_then_close() -> _T:
        try:
            return await coro
        finally:
            await aclose_loop_resources()

    with asyncio.Runner() as runner:
        return runner.run(run_then_close())


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a backend's coroutine from its sync method: on a loop of its own here, or in a worker
    thread when this thread already runs an event loop. Each run's loop is closed when it returns,
    and its per-loop HTTP client with it; the sync path shares the async path's deadline and
    cancellation (connections are not pooled across sync calls). The worker thread runs in a copy
    of the caller's context, as ``asyncio.to_thread`` does: context variables (a framework's run
    context, the usage ``explain`` collects) reach the coroutine."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_own_loop(coro)
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rerankers-plugins-http") as pool:
        return pool.submit(context.run, _run_in_own_loop, coro).result()
