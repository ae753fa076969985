"""A fake clock for the rate limiter (:class:`rerankers_plugins.scorers.limits.Clock`) whose time
moves only when every participant is asleep on it or done.

Why not a clock whose ``sleep(s)`` simply adds ``s``: the limiter grants a request its start at
time ``t``; if another caller's sleep moved time on before that request reached the server, the
server would stamp it later than ``t`` and the window it was counted in would be wrong (a request
granted at 59.9 s arriving "at" 120 s). Here time stands still while any participant is doing
anything but sleeping on the clock (sending a request, parsing an answer, waiting for the server),
so every arrival is stamped with exactly the time its start was granted.

Each worker (a thread, an async task) wraps its work in ``with clock.participant():``. When every
participant is asleep, time jumps to the earliest wake-up and those sleepers wake; a sleeper that
belongs to no participant makes time jump at once (so a lone test needs no registration).
Participants must never wait on each other except through the clock (a lock or a semaphore held by
a sleeper would stop time for good): one batch per call, calls per event loop under the scorer's
``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator


class SteppedClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._active = 0
        self._sleepers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.start = start

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    @property
    def elapsed(self) -> float:
        return self.monotonic() - self.start

    @contextlib.contextmanager
    def participant(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._advance()

    def _advance(self) -> None:
        """Under the lock: while every participant sleeps, jump to the earliest wake-up."""
        while self._sleepers and len(self._sleepers) >= self._active:
            self._now = max(self._now, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self._now:
                heapq.heappop(self._sleepers)[2]()

    def _enter(self, seconds: float, wake: Callable[[], None]) -> tuple[float, int, Callable[[], None]]:
        with self._lock:
            entry = (self._now + seconds, next(self._seq), wake)
            heapq.heappush(self._sleepers, entry)
            self._advance()
            return entry

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        woken = threading.Event()
        self._enter(seconds, woken.set)
        woken.wait()

    async def asleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        entry = self._enter(seconds, lambda: loop.call_soon_threadsafe(done))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                if entry in self._sleepers:
                    self._sleepers.remove(entry)
                    heapq.heapify(self._sleepers)
                self._advance()
            raise


def most_in_any_window(stamps: list[float], window: float = 60.0) -> int:
    """The most of ``stamps`` inside any half-open window ``[s, s + window)``."""
    ordered = sorted(stamps)
    most = 0
    j = 0
    for i, t in enumerate(ordered):
        while ordered[j] + window <= t:
            j += 1
        most = max(most, i - j + 1)
    return most


def most_units_in_any_window(stamped: list[tuple[float, int]], window: float = 60.0) -> int:
    """The most units of ``(stamp, units)`` inside any half-open window ``[s, s + window)``."""
    ordered = sorted(stamped)
    return max((sum(u for t, u in ordered if start <= t < start + window) for start, _ in ordered), default=0)
