"""Rounds (a batch job's block): every thread gets exactly its own outputs, whatever the calls, and
the batches a block makes depend on the threads' calls only, never on timing."""

from __future__ import annotations

import random
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins.scorers._scheduler import Plan, Rounds, Unit, in_rounds


class _Model:
    """Stands in for a local scorer: ``_run_batch`` returns each item's own data, records batches."""

    def __init__(self, batch_size: int, max_batch_tokens: int | None) -> None:
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.batches: list[tuple[str, tuple, tuple]] = []
        self._lock = threading.Lock()

    def _run_batch(self, kind: str, data: list, owners: list) -> list:
        with self._lock:
            self.batches.append((kind, tuple(data), tuple(owners)))
        assert len(data) <= self.batch_size
        return [("out", d) for d in data]


# a thread's calls: (which model, [(tokens, kind), ...]); a call may have no units
_calls = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["pair", "query"])), max_size=6),
    ),
    max_size=4,
)


def _run(
    plan_of: list[list[tuple[int, list[tuple[int, str]]]]], models: list[_Model], jitter: random.Random
) -> list:
    rounds = Rounds(len(plan_of))
    got: list = [None] * len(plan_of)

    def thread(index: int) -> None:
        in_rounds.set((rounds, index))
        mine = []
        try:
            for c, (model, units) in enumerate(plan_of[index]):
                time.sleep(jitter.random() / 2000)
                data = [Unit((index, c, u), tokens, kind) for u, (tokens, kind) in enumerate(units)]
                mine.append(rounds.call(index, models[model], Plan(data, finish=list)))
        finally:
            rounds.leave()
        got[index] = mine

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(len(plan_of))]
    for t in threads:
        t.start()
    rounds.serve()
    for t in threads:
        t.join()
    return got


@settings(max_examples=60, deadline=None)
@given(
    plan_of=st.lists(_calls, min_size=1, max_size=5),
    batch=st.integers(1, 5),
    budget=st.sampled_from([None, 60, 200]),
    seed=st.integers(0, 99),
)
def test_each_thread_gets_its_own_outputs_and_batching_is_the_same_every_run(
    plan_of: list, batch: int, budget: int | None, seed: int
) -> None:
    runs = []
    for attempt in range(2):
        models = [_Model(batch, budget), _Model(batch, budget)]
        got = _run(plan_of, models, random.Random(seed * 7 + attempt))
        for index, calls in enumerate(plan_of):
            assert got[index] == [
                [("out", (index, c, u)) for u in range(len(units))] for c, (_, units) in enumerate(calls)
            ]
        runs.append([m.batches for m in models])
        kind_of = {
            (i, c, u): k
            for i, calls in enumerate(plan_of)
            for c, (_, us) in enumerate(calls)
            for u, (_, k) in enumerate(us)
        }
        for m in models:  # one kind a batch; a unit computed once
            assert all({kind_of[d] for d in data} == {k} for k, data, _ in m.batches)
            assert all(owners == tuple(d[0] for d in data) for _, data, owners in m.batches)
            seen = [d for _, data, _ in m.batches for d in data]
            assert len(seen) == len(set(seen))
    assert runs[0] == runs[1]


def test_a_round_sorts_pairs_by_length_across_threads_and_owners_name_the_thread() -> None:
    model = _Model(batch_size=2, max_batch_tokens=None)
    lengths = [[30, 5], [29, 6]]
    _run([[(0, [(n, "pair") for n in ls])] for ls in lengths], [model, model], random.Random(0))
    # one round, both threads' units together, longest first: (30, 29) then (6, 5)
    assert [(data, owners) for _, data, owners in model.batches] == [
        (((0, 0, 0), (1, 0, 0)), (0, 1)),
        (((1, 0, 1), (0, 0, 1)), (1, 0)),
    ]


def test_an_error_reaches_only_the_calls_of_its_round_and_model() -> None:
    class Failing(_Model):
        def _run_batch(self, kind: str, data: list, owners: list) -> list:
            raise RuntimeError("boom")

    bad, good = Failing(4, None), _Model(4, None)
    rounds = Rounds(2)
    out: dict[int, object] = {}

    def thread(index: int, model: _Model) -> None:
        in_rounds.set((rounds, index))
        try:
            out[index] = rounds.call(index, model, Plan([Unit(index, 3)], finish=list))
        except RuntimeError as exc:
            out[index] = str(exc)
        finally:
            rounds.leave()

    threads = [
        threading.Thread(target=thread, args=(0, bad)),
        threading.Thread(target=thread, args=(1, good)),
    ]
    for t in threads:
        t.start()
    rounds.serve()
    for t in threads:
        t.join()
    assert out == {0: "boom", 1: [("out", 1)]}


def test_an_interrupted_block_ends_its_waiting_and_later_calls() -> None:
    """Ctrl-C in the block's thread (here: the model raising KeyboardInterrupt) must not leave the
    request threads waiting for ever."""
    from rerankers_plugins.errors import BackendError

    class Interrupted(_Model):
        def _run_batch(self, kind: str, data: list, owners: list) -> list:
            raise KeyboardInterrupt

    rounds = Rounds(2)
    seen: list[str] = []

    def thread(index: int) -> None:
        in_rounds.set((rounds, index))
        try:
            for _ in range(2):
                try:
                    rounds.call(index, Interrupted(4, None), Plan([Unit(index, 3)], finish=list))
                except BackendError as exc:
                    seen.append(str(exc))
        finally:
            rounds.leave()

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        rounds.serve()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("serve() swallowed the interrupt")
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert seen == ["the block's rounds stopped: KeyboardInterrupt"] * 4


def test_two_calls_at_once_from_one_query_are_refused_not_left_waiting() -> None:
    import pytest

    from rerankers_plugins.errors import BackendError

    rounds = Rounds(1)
    rounds._calls[0] = object()  # type: ignore[assignment]  # the query's first call, still waiting
    with pytest.raises(BackendError, match="two model calls at once"):
        rounds.call(0, _Model(4, None), Plan([Unit(0, 3)], finish=list))
