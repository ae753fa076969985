"""The rate limiter, usage counting and budgets (rerankers_plugins.scorers.limits), on fake clocks:
no test sleeps."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import gc
import pickle
import threading

import pytest
from fake_clock import SteppedClock, most_in_any_window, most_units_in_any_window
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins import BackendError, BudgetExceeded, ConfigError, DeadlineExceeded, RateLimit, Usage
from rerankers_plugins.scorers._aio import run_sync
from rerankers_plugins.scorers.limits import (
    WINDOW,
    Budget,
    Limiter,
    UsageCounter,
    collect_usage,
    limiter_identity,
    shared_limiter,
    usage_from,
)


def limiter(clock: SteppedClock, **limits: int) -> Limiter:
    return Limiter(RateLimit(**limits, clock=clock), "test")


# -- RateLimit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"requests_per_minute": 0},
        {"requests_per_minute": -1},
        {"units_per_minute": 0},
        {"requests_per_minute": 1.5},
        {"requests_per_minute": True},
        {"requests_per_minute": "10"},
        {"requests_per_minute": 10, "clock": object()},
    ],
)
def test_bad_rate_limits_are_config_errors(kw):
    with pytest.raises(ConfigError):
        RateLimit(**kw)


def test_a_rate_limit_is_frozen_and_pickles():
    limit = RateLimit(requests_per_minute=10, units_per_minute=20)
    assert pickle.loads(pickle.dumps(limit)) == limit
    assert limit.describe() == "10 requests and 20 units per minute"
    with pytest.raises(AttributeError):
        limit.requests_per_minute = 5  # type: ignore[misc]


# -- the window ------------------------------------------------------------------------------------------


def test_requests_wait_for_the_sliding_window():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=3)
    starts = []
    for _ in range(7):
        lim.acquire_sync(who="t")
        starts.append(clock.monotonic())
    assert starts == [0, 0, 0, 60, 60, 60, 120]


def test_a_window_slides_it_does_not_reset():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=2)
    lim.acquire_sync()
    clock.sleep(50)
    lim.acquire_sync()  # at 50
    lim.acquire_sync()  # the one at 0 must leave the window first: 60
    assert clock.monotonic() == 60
    lim.acquire_sync()  # the one at 50 leaves at 110
    assert clock.monotonic() == 110


def test_units_wait_until_they_fit():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, units_per_minute=5)
    starts = []
    for cost in (2, 2, 2, 1, 3):
        lim.acquire_sync(cost)
        starts.append(clock.monotonic())
    # 2+2 at 0; the third 2 needs the first out (60); 1 fits beside them (2+2+1 in [60, 120));
    # 3 needs the 2 at 0 and the 2 at 60 out... i.e. total in (t-60, t] + 3 <= 5: at 120
    assert starts == [0, 0, 60, 60, 120]
    assert most_units_in_any_window(list(zip(starts, (2, 2, 2, 1, 3), strict=True))) <= 5


def test_both_limits_together():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=3, units_per_minute=4)
    starts = [(lim.acquire_sync(c), clock.monotonic())[1] for c in (1, 1, 1, 1, 3, 1)]
    # the 4th waits for requests (3 at 0), the 5th fits beside it (1 + 3 units), the 6th waits for units
    assert starts == [0, 0, 0, 60, 60, 120]


def test_a_request_larger_than_the_unit_limit_is_a_config_error():
    lim = limiter(SteppedClock(), units_per_minute=2)
    with pytest.raises(ConfigError, match="3 units"):
        lim.acquire_sync(3)


def test_a_start_past_the_deadline_is_refused_at_once_and_leaves_nothing_behind():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=1)
    lim.acquire_sync(remaining=5)
    with pytest.raises(DeadlineExceeded, match="not sent") as refused:
        lim.acquire_sync(remaining=59.5)
    assert isinstance(refused.value, BackendError)  # so on_error="keep_order" falls back
    assert clock.monotonic() == 0  # refused before waiting
    assert lim.starts() == [0]  # no reservation left behind
    lim.acquire_sync(remaining=60.5)  # a start at 60 is before this deadline
    assert clock.monotonic() == 60


async def test_a_cancelled_waiter_gives_its_turn_back():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=1)
    await lim.acquire()

    async def wait_for_a_turn():
        with clock.participant():
            await lim.acquire()

    with clock.participant():  # this test is a participant too: while it runs, time stands still
        waiter = asyncio.create_task(wait_for_a_turn())
        while lim.starts() != [0, 60]:
            await asyncio.sleep(0)
        assert clock.monotonic() == 0
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert lim.starts() == [0]
    await lim.acquire()
    assert clock.monotonic() == 60


def test_a_pause_holds_every_caller_back():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=100)
    lim.acquire_sync()
    lim.pause(30, "t")
    lim.acquire_sync()
    assert clock.monotonic() == 30
    lim.pause(40, "t")
    with pytest.raises(DeadlineExceeded, match="paused after an HTTP 429"):
        lim.acquire_sync(remaining=10)  # nobody before 70
    lim.acquire_sync(remaining=41)
    assert clock.monotonic() == 70


def test_a_pause_set_while_waiting_moves_the_waiters():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=1)
    lim.acquire_sync()
    got = []

    def late_caller():
        with clock.participant():
            lim.acquire_sync()  # reserved at 60
            got.append(clock.monotonic())

    with clock.participant():
        worker = threading.Thread(target=late_caller)
        worker.start()
        while lim.starts() != [0, 60]:
            threading.Event().wait(0.001)
        lim.pause(90, "t")  # a 429 at 0: nobody before 90
    worker.join(5)
    assert got == [90]


def test_settle_replaces_the_estimate():
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, units_per_minute=4)
    ticket = lim.acquire_sync(1)
    lim.settle(ticket, 4)  # billed 4, not 1
    lim.acquire_sync(1)
    assert clock.monotonic() == 60


# -- one limiter per key and URL ---------------------------------------------------------------------------


def test_one_limiter_per_key_and_url_and_different_limits_are_refused():
    identity = limiter_identity("sk-secret-key", "https://api.example")
    assert "sk-secret-key" not in identity
    assert identity != limiter_identity("sk-secret-key", "https://other.example")
    assert identity != limiter_identity("sk-other-key", "https://api.example")
    a = shared_limiter(identity, RateLimit(requests_per_minute=10), "a")
    assert shared_limiter(identity, RateLimit(requests_per_minute=10), "b") is a
    with pytest.raises(ConfigError, match=r"requests_per_minute=10.*requests_per_minute=20"):
        shared_limiter(identity, RateLimit(requests_per_minute=20), "c")
    del a  # no scorer holds it and it holds no start: a new limit may be set
    assert shared_limiter(identity, RateLimit(requests_per_minute=20), "d").limit.requests_per_minute == 20


def test_a_limiter_outlives_its_scorers_while_its_window_or_a_pause_holds_anything():
    """A reranker built per request (get_scorer, from_spec, an adapter) still waits for the ones
    before it once they are garbage-collected; the limiter is forgotten only once idle."""
    clock = SteppedClock(start=0.0)
    identity = limiter_identity("sk-per-request", "https://per-request.example")
    one = RateLimit(requests_per_minute=1, clock=clock)
    shared_limiter(identity, one, "first request").acquire_sync()
    gc.collect()  # no scorer holds it any more
    second = shared_limiter(identity, one, "second request")
    assert second.starts() == [0]
    second.acquire_sync()
    assert clock.monotonic() == 60  # it waited for the first request's minute
    del second
    gc.collect()
    with pytest.raises(ConfigError, match=r"requests_per_minute=1.*requests_per_minute=5"):
        shared_limiter(identity, RateLimit(requests_per_minute=5, clock=clock), "other limit")
    clock.sleep(60)  # the window is empty now: forgotten, and another limit may be set
    assert shared_limiter(identity, RateLimit(requests_per_minute=5, clock=clock), "x").starts() == []
    # a pause in force holds it too, with no start in its window
    paused = limiter_identity("sk-paused", "https://per-request.example")
    shared_limiter(paused, one, "a").pause(30, "a")
    gc.collect()
    assert shared_limiter(paused, one, "b").paused_until == 150


def test_a_new_client_at_a_dead_clients_address_gets_its_own_identity():
    class Client:
        pass

    first = Client()
    identity = limiter_identity(None, None, [first])
    del first
    gc.collect()
    clients = [Client() for _ in range(1000)]  # one of them almost surely at the same address
    assert all(limiter_identity(None, None, [c]) != identity for c in clients)
    assert len({limiter_identity(None, None, [c]) for c in clients}) == 1000


def test_injected_clients_stand_for_their_key():
    client = object()
    assert limiter_identity(None, None, [client]) == limiter_identity("ignored", None, [client, None])
    assert limiter_identity(None, None, [client]) != limiter_identity(None, None, [object()])


# -- usage -------------------------------------------------------------------------------------------------


def test_usage_reports_are_untrusted():
    assert usage_from({"search_units": 2.0}) == Usage(search_units=2)
    assert usage_from({"total_tokens": 7}) == Usage(total_tokens=7)
    assert usage_from({"input_tokens": 3, "output_tokens": 1}).total_tokens == 4
    for bad in (None, {}, {"search_units": "2"}, {"search_units": -1}, {"total_tokens": float("nan")}, "x"):
        assert usage_from(bad) is None


def test_counters_and_budgets_copy_and_pickle_with_their_counts():
    counter = UsageCounter()
    counter.add(Usage(requests=2, search_units=3), "x")
    budget = Budget(10, "search units", "max_search_units")
    budget.hold(4, "x").spend(4, 4)
    budget.hold(3, "x")  # in flight: the original's, not the copy's
    for clone in (copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))):
        c, b = clone(counter), clone(budget)
        assert c.get() == Usage(requests=2, search_units=3)
        c.add(Usage(requests=1), "x")  # each counts on its own from there
        assert (b.spent, b.held, b.limit) == (4, 0, 10)
        b.hold(6, "x").spend(6, 6)
        assert b.spent == 10
    assert counter.get() == Usage(requests=2, search_units=3)
    assert (budget.spent, budget.held) == (4, 3)


def test_a_counter_is_thread_safe_and_resets():
    counter = UsageCounter()

    def add():
        for _ in range(1000):
            counter.add(Usage(requests=1, search_units=2), "x")

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.get() == Usage(requests=8000, search_units=16000)
    assert counter.reset() == Usage(requests=8000, search_units=16000)
    assert counter.get() == Usage()


async def test_collected_usage_follows_tasks_threads_and_run_sync():
    counter = UsageCounter()

    def spend():
        counter.add(Usage(requests=1), "api")

    async def spend_async():
        spend()

    async def run_sync_inside_a_loop():  # the sync path's worker thread, from a running loop
        run_sync(spend_async())

    with collect_usage() as outer:
        with collect_usage() as inner:
            spend()
            await asyncio.gather(*(asyncio.create_task(spend_async()) for _ in range(3)))
            await asyncio.to_thread(spend)
            await run_sync_inside_a_loop()
            contextvars.copy_context().run(spend)
        spend()
    spend()  # outside: not collected
    assert inner.by_backend() == {"api": Usage(requests=7)}
    assert outer.total() == Usage(requests=8)
    assert counter.get() == Usage(requests=9)


# -- budgets -------------------------------------------------------------------------------------------------


def test_a_budget_refuses_before_and_counts_what_was_billed():
    budget = Budget(5, "search units", "max_search_units")
    hold = budget.hold(2, "cohere")
    other = budget.hold(2, "cohere")  # in flight at once: 4 held
    with pytest.raises(
        BudgetExceeded, match=r"max_search_units=5 would be passed: 0 search units spent, 4 held"
    ):
        budget.hold(2, "cohere")
    hold.spend(3, 2)  # billed more than estimated
    hold.close()
    other.close()  # failed: spends nothing
    assert (budget.spent, budget.held) == (3, 0)
    with pytest.raises(BudgetExceeded) as refused:
        budget.hold(3, "cohere")
    assert (refused.value.spent, refused.value.limit, refused.value.needed) == (3, 5, 3)
    assert not isinstance(refused.value, BackendError)  # keep_order must not hide it
    assert pickle.loads(pickle.dumps(refused.value)).spent == 3
    budget.reset()
    budget.hold(5, "cohere").close()


# -- the invariant, for any sequence of requests, waits and pauses -------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 4)),
        st.tuples(st.just("idle"), st.floats(0, 90, allow_nan=False)),
        st.tuples(st.just("pause"), st.floats(0, 40, allow_nan=False)),
        st.tuples(st.just("deadline"), st.floats(0.5, 120, allow_nan=False)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(rpm=st.one_of(st.none(), st.integers(1, 5)), upm=st.one_of(st.none(), st.integers(4, 9)), ops=OPS)
def test_no_window_ever_holds_more_than_the_limits(rpm, upm, ops):
    if rpm is None and upm is None:
        rpm = 3
    clock = SteppedClock(start=0.0)
    lim = limiter(clock, requests_per_minute=rpm, units_per_minute=upm)
    started: list[tuple[float, int]] = []
    paused_until = 0.0
    for op, value in ops:
        if op == "idle":
            clock.sleep(value)
        elif op == "pause":
            lim.pause(value, "t")
            paused_until = max(paused_until, clock.monotonic() + value)
        else:
            cost = value if op == "acquire" else 1
            asked = clock.monotonic()
            try:
                lim.acquire_sync(cost, remaining=value if op == "deadline" else None)
            except DeadlineExceeded:
                assert clock.monotonic() == asked  # refused without waiting
                continue
            now = clock.monotonic()
            assert now >= paused_until
            if op == "deadline":
                assert now < asked + value
            started.append((now, cost))
    stamps = [t for t, _ in started]
    assert stamps == sorted(stamps)  # first come, first served
    if rpm is not None:
        assert most_in_any_window(stamps, WINDOW) <= rpm
    if upm is not None:
        assert most_units_in_any_window(started, WINDOW) <= upm
