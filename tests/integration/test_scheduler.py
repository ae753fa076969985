"""Many callers, one local model: what each request gets when requests share the scorer's worker.

The model is the edge: a forward pre-hook on the scorer's torch module counts the rows each batch
computes, can hold the worker in its first batch (so that requests queue behind it, in a known
order) and can raise on a chosen token (a text that makes the model fail). Nothing in the scorer
or the scheduler is replaced. Every assertion is on what was computed and what each caller got,
never on how long anything took.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins import (
    BiEncoderScorer,
    Candidate,
    ColBERTScorer,
    CrossEncoderScorer,
    DeadlineExceeded,
    Overloaded,
    PolyEncoderScorer,
    Seq2SeqScorer,
    rerank,
)
from rerankers_plugins.errors import BackendError
from rerankers_plugins.scorers._scheduler import Plan, Scheduler, SchedulerOptions, Unit
from rerankers_plugins.scorers.poly_encoder import build_poly_encoder
from tests.conformance.hub_layouts import build_qwen3_causal
from tests.tiny import build_bi_encoder, build_colbert, build_cross_encoder, build_encoder, build_t5

WORDS = [
    "the",
    "red",
    "apple",
    "falls",
    "a",
    "bank",
    "by",
    "river",
    "apples",
    "and",
    "pears",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "water",
    "city",
    "people",
]


def _poly(directory: Path) -> Path:
    import torch

    torch.manual_seed(0)
    build_poly_encoder(str(build_encoder(directory / "base")), codes=4, max_length=64).save_pretrained(
        directory / "poly"
    )
    return directory / "poly"


BUILDERS: dict[str, tuple[Callable[..., Any], Callable[[Path], Path]]] = {
    "cross-encoder": (CrossEncoderScorer, build_cross_encoder),
    "causal": (functools.partial(CrossEncoderScorer, prompt_format="qwen3"), build_qwen3_causal),
    "bi-encoder": (BiEncoderScorer, build_bi_encoder),
    "colbert": (ColBERTScorer, build_colbert),
    "poly-encoder": (PolyEncoderScorer, _poly),
    "seq2seq": (Seq2SeqScorer, build_t5),
}


def _texts(seed: int, n: int) -> list[str]:
    """``n`` distinct texts of varied length (so batches need padding)."""
    return [
        " ".join(WORDS[(seed * 7 + i * 3 + j) % len(WORDS)] for j in range(2 + (seed + i) % 9)) + f" {i}"
        for i in range(n)
    ]


def _model_of(scorer: Any) -> Any:
    """The token embedding of the model a scorer's batches run through (the edge the hooks sit on:
    every forward pass of every architecture starts there, with the batch's ``input_ids``)."""
    import torch

    causal = getattr(scorer, "_causal", None)
    root = causal.model if causal is not None else None
    for name in ("_encoder", "_module", "_model"):
        root = root if root is not None else getattr(scorer, name, None)
    return next(
        m
        for name, m in root.named_modules()
        if isinstance(m, torch.nn.Embedding) and name.endswith(("word_embeddings", "embed_tokens"))
    )


class Model:
    """A forward pre-hook: counts rows, holds the first batch until released, raises on ``poison``."""

    def __init__(self, scorer: Any, poison: int | None = None) -> None:
        self.rows: list[int] = []
        self.widths: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.poison = poison
        self._handle = _model_of(scorer).register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = args[0] if args else kwargs["input"]
        self.rows.append(int(ids.shape[0]))
        self.widths.append(int(ids.shape[1]))
        self.entered.set()
        assert self.gate.wait(30), "the test never released the model"
        if self.poison is not None and bool((ids == self.poison).any()):
            raise RuntimeError("poisoned input")

    def remove(self) -> None:
        self.gate.set()
        self._handle.remove()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        kind: build(tmp_path_factory.mktemp(kind.replace("-", "_"))) for kind, (_, build) in BUILDERS.items()
    }


def _scorer(kind: str, dirs: dict[str, Path], **options: Any) -> Any:
    """A scorer of ``kind``; with the scheduler on, one stream (a held batch holds the whole worker,
    so the order of what queues behind it is known) unless the test says otherwise."""
    cls = BUILDERS[kind][0]
    if options.get("scheduler", True) is not False:
        scheduler = options.get("scheduler")
        options["scheduler"] = {"streams": 1, **(scheduler if isinstance(scheduler, dict) else {})}
    extra: dict[str, Any] = {"warmup": False} if kind in ("cross-encoder", "causal") else {}
    return cls(str(dirs[kind]), device="cpu", dtype="float32", **extra, **options)


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def _queued(scorer: Any, n: int) -> None:
    _wait_for(lambda: scorer.queue_stats().waiting_requests >= n, f"{n} requests queued")


class Callers:
    """Requests made from threads: each call's result or error, by name."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = fn()
            except BaseException as exc:
                self.results[name] = exc

        t = threading.Thread(target=run)
        t.start()
        self._threads.append(t)

    def join(self) -> dict[str, Any]:
        for t in self._threads:
            t.join(30)
            assert not t.is_alive()
        return self.results


def _hold(scorer: Any, held: list[Model], poison: int | None = None) -> tuple[Model, Callers]:
    """The scorer's model held in its first batch (a one-text "blocker" call), so that what is
    submitted next queues behind it in a known order until ``model.gate`` is set."""
    model = Model(scorer, poison=poison)
    held.append(model)
    callers = Callers()
    callers.start("blocker", lambda: scorer.score("hold", ["the worker"]))
    assert model.entered.wait(30)
    return model, callers


@pytest.fixture
def held() -> Iterator[list[Model]]:
    models: list[Model] = []
    yield models
    for m in models:
        m.remove()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_request_scores_the_same_alone_and_in_a_batch_shared_with_others(
    kind: str, dirs: dict[str, Path], held: list[Model]
) -> None:
    alone = _scorer(kind, dirs, scheduler=False)
    shared = _scorer(kind, dirs, scheduler={"window": 512})
    requests = {f"r{i}": (f"{WORDS[i]} apple question {i}", _texts(i, 3 + 2 * i)) for i in range(5)}
    expected = {name: alone.score(q, texts) for name, (q, texts) in requests.items()}
    model, callers = _hold(shared, held)
    for name, (q, texts) in requests.items():
        callers.start(name, lambda q=q, texts=texts: shared.score(q, texts))
    _queued(shared, 1 + len(requests))
    model.gate.set()
    got = callers.join()
    for name in requests:
        assert got[name] == pytest.approx(expected[name], abs=1e-5), name
    # the five requests were computed together: batches held units of several of them
    assert shared.queue_stats().max_batch_requests >= 3


def test_a_request_alone_gets_exactly_the_scores_of_a_direct_call(dirs: dict[str, Path]) -> None:
    direct = _scorer("cross-encoder", dirs, scheduler=False)
    queued = _scorer("cross-encoder", dirs, scheduler={"streams": 2})  # its batches on two streams
    texts = _texts(3, 40)
    assert queued.score("red apple", texts) == direct.score("red apple", texts)
    assert asyncio.run(queued.ascore("red apple", texts)) == direct.score("red apple", texts)


def test_a_causal_reranker_shares_each_querys_prefix_inside_a_mixed_batch(
    dirs: dict[str, Path], held: list[Model]
) -> None:
    scorer = _scorer("causal", dirs, scheduler={"streams": 1, "window": 64})
    alone = _scorer("causal", dirs, scheduler=False)
    model, callers = _hold(scorer, held)
    requests = {"a": ("red apple question", _texts(1, 4)), "b": ("river bank question", _texts(2, 4))}
    for name, (q, texts) in requests.items():
        callers.start(name, lambda q=q, texts=texts: scorer.score(q, texts))
    _queued(scorer, 3)
    model.gate.set()
    got = callers.join()
    for name, (q, texts) in requests.items():
        assert got[name] == pytest.approx(alone.score(q, texts), abs=1e-5)
    assert scorer.queue_stats().max_batch_requests == 2  # both requests in one batch
    # in it, each request's prompt prefix ran once (one row of the shared tokens), then its 4 tails
    # after it: prefix + longest tail = its longest prompt
    passes = list(zip(model.rows[1:], model.widths[1:], strict=True))
    assert [rows for rows, _ in passes] == [1, 4, 1, 4]
    for (_, prefix), (_, tail), (q, texts) in zip(passes[0::2], passes[1::2], requests.values(), strict=True):
        assert prefix >= 8
        assert prefix + tail == max(len(row) for row in scorer._prompt_rows(q, texts))


def test_cancelled_requests_are_never_computed(dirs: dict[str, Path], held: list[Model]) -> None:
    scorer = _scorer("cross-encoder", dirs)
    model = Model(scorer)
    held.append(model)

    async def main() -> dict[str, Any]:
        blocker = asyncio.create_task(scorer.ascore("hold", ["the worker", "is busy", "now"]))
        await asyncio.to_thread(model.entered.wait, 30)
        tasks = {i: asyncio.create_task(scorer.ascore(f"query {i}", _texts(i, 5))) for i in range(16)}
        await asyncio.to_thread(_queued, scorer, 17)
        for i in range(0, 16, 2):
            tasks[i].cancel()
        await asyncio.sleep(0.05)
        model.gate.set()
        out = await asyncio.gather(blocker, *tasks.values(), return_exceptions=True)
        return dict(zip(["blocker", *tasks], out, strict=True))

    got = asyncio.run(main())
    for i in range(16):
        assert isinstance(got[i], asyncio.CancelledError) == (i % 2 == 0)
    # the blocker's 3 pairs and the 8 kept requests' 5 pairs each; none of the cancelled ones'
    assert sum(model.rows) == 3 + 8 * 5
    outcomes = [t.outcome for t in scorer.queue_stats().recent]
    assert outcomes.count("cancelled") == 8 and outcomes.count("done") == 9


def test_an_abandoned_sync_call_is_withdrawn(dirs: dict[str, Path], held: list[Model]) -> None:
    scorer = _scorer("cross-encoder", dirs, deadline=0.3)
    model, callers = _hold(scorer, held)
    with pytest.raises(DeadlineExceeded, match="deadline"):
        scorer.score("late", _texts(1, 6))  # the caller stops waiting at its deadline
    model.gate.set()
    assert isinstance(callers.join()["blocker"], DeadlineExceeded)  # held past its own deadline too
    # the worker computed the blocker's batch that was under way, nothing of the late request
    assert sum(model.rows) == 1
    assert len(scorer.score("fresh", ["a call after"])) == 1


def test_expired_requests_are_dropped_and_keep_order_passes_them_on(
    dirs: dict[str, Path], held: list[Model]
) -> None:
    scorer = _scorer("cross-encoder", dirs, deadline=0.2, on_error="keep_order")
    model, callers = _hold(scorer, held)
    candidates = [Candidate(text=t, id=f"d{i}") for i, t in enumerate(_texts(2, 4))]
    result = rerank("late query", candidates, scorer, top_n=4)
    model.gate.set()
    callers.join()
    assert [s.candidate.id for s in result] == ["d0", "d1", "d2", "d3"]
    assert all(s.details["fallback"] == "keep_order" for s in result)
    assert "DeadlineExceeded" in result[0].details["error"]
    assert sum(model.rows) == 1


def test_a_failing_input_fails_only_its_own_request(dirs: dict[str, Path], held: list[Model]) -> None:
    scorer = _scorer("cross-encoder", dirs)
    alone = _scorer("cross-encoder", dirs, scheduler=False)
    poison = scorer.tokenizer.convert_tokens_to_ids("museum")
    model, callers = _hold(scorer, held, poison=poison)
    requests = {f"r{i}": (f"query {i}", _texts(i, 4)) for i in range(6)}
    requests["bad"] = ("query bad", ["fine text", "the museum text", "also fine"])
    for name, (q, texts) in requests.items():
        callers.start(name, lambda q=q, texts=texts: scorer.score(q, texts))
    _queued(scorer, 1 + len(requests))
    model.gate.set()
    got = callers.join()
    assert isinstance(got["bad"], RuntimeError) and "poisoned" in str(got["bad"])
    for name, (q, texts) in requests.items():
        if name != "bad":
            assert got[name] == pytest.approx(alone.score(q, texts), abs=1e-5), name
    model.poison = None
    assert len(scorer.score("after", ["the museum text"])) == 1  # the worker lives on


def test_a_large_request_holds_small_ones_back_for_its_fair_share_only(
    dirs: dict[str, Path], held: list[Model]
) -> None:
    scorer = _scorer("cross-encoder", dirs, batch_size=8, scheduler={"window": 16, "fair_share": 32})
    model = Model(scorer)
    held.append(model)
    finished: list[str] = []
    callers = Callers()

    def call(name: str, q: str, texts: list[str]) -> list[float]:
        out = scorer.score(q, texts)
        finished.append(name)
        return out

    callers.start("big", lambda: call("big", "big", _texts(9, 300)))
    assert model.entered.wait(30)
    for i in range(8):
        callers.start(f"small{i}", lambda i=i: call(f"small{i}", f"small {i}", _texts(i, 5)))
    _queued(scorer, 9)
    model.gate.set()
    callers.join()
    assert finished[-1] == "big"  # every small request finished before the large one
    # and the large one had its fair share before them: 32 of its pairs, in the first 4 batches
    assert sum(model.rows[:4]) == 32


def test_past_the_queue_limit_a_request_fails_fast_with_overloaded(
    dirs: dict[str, Path], held: list[Model]
) -> None:
    scorer = _scorer("cross-encoder", dirs, scheduler={"max_queue_tokens": 200})
    model, callers = _hold(scorer, held)
    callers.start("queued", lambda: scorer.score("first", _texts(1, 10)))
    _queued(scorer, 2)
    with pytest.raises(Overloaded, match="limit 200") as info:
        scorer.score("second", _texts(2, 10))
    assert isinstance(info.value, BackendError)
    assert info.value.retry_after is None or info.value.retry_after > 0
    model.gate.set()
    got = callers.join()
    assert len(got["queued"]) == 10


def test_closing_a_scorer_ends_its_waiting_requests(dirs: dict[str, Path], held: list[Model]) -> None:
    scorer = _scorer("cross-encoder", dirs)
    model, callers = _hold(scorer, held)
    callers.start("waiting", lambda: scorer.score("waiting", _texts(1, 3)))
    _queued(scorer, 2)
    scorer.close()
    model.gate.set()
    got = callers.join()
    assert isinstance(got["waiting"], BackendError) and "closed" in str(got["waiting"])
    with pytest.raises(BackendError, match="closed"):
        scorer.score("after", ["x"])


def test_a_collected_scorer_stops_its_worker(dirs: dict[str, Path]) -> None:
    scorer = _scorer("cross-encoder", dirs)
    scorer.score("start", ["the worker"])
    name = f"rerankers-plugins-{scorer.name}"
    assert any(t.name == name for t in threading.enumerate())
    del scorer
    gc.collect()
    _wait_for(lambda: not any(t.name == name for t in threading.enumerate()), "the worker thread ended")


def _score_in_child(scorer: Any, out: Any) -> None:
    out.put(scorer.score("child", ["the red apple"]))


def test_a_forked_child_scores_with_a_worker_of_its_own(dirs: dict[str, Path]) -> None:
    import torch

    scorer = _scorer("cross-encoder", dirs)
    expected = scorer.score("child", ["the red apple"])  # the parent's worker exists now
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP's pool is not fork-safe; the child must not inherit a busy one
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_score_in_child, args=(scorer, out))
        child.start()
        got = out.get(timeout=60)
        child.join(30)
    finally:
        torch.set_num_threads(threads)
    assert child.exitcode == 0
    assert got == pytest.approx(expected, abs=1e-6)


def test_the_adapters_reach_the_model_through_its_worker(dirs: dict[str, Path]) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    scorer = _scorer("cross-encoder", dirs)
    texts = _texts(4, 6)
    compressor = RerankCompressor(scorer=scorer, top_n=3)
    post = RerankPostprocessor(scorer=scorer, top_n=3)
    docs = [Document(page_content=t) for t in texts]
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
    calls = [
        lambda: compressor.compress_documents(docs, "red apple"),
        lambda: asyncio.run(compressor.acompress_documents(docs, "red apple")),
        lambda: post.postprocess_nodes(nodes, query_bundle=QueryBundle("red apple")),
        lambda: asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle("red apple"))),
    ]
    for n, call in enumerate(calls, start=1):
        assert len(call()) == 3
        assert scorer.queue_stats().units == 6 * n  # each call's 6 pairs went through the worker


# -- the scheduler on its own, with a pure batch function at the edge ----------------------------------


def _echo(kind: str, data: list[Any], owners: list[Any]) -> list[Any]:
    return [(kind, d) for d in data]


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["pair", "query", "document"])), max_size=30),
        min_size=1,
        max_size=12,
    ),
    window=st.integers(1, 50),
    fair_share=st.integers(1, 60),
    streams=st.integers(1, 3),
    batch_size=st.integers(1, 9),
    budget=st.one_of(st.none(), st.integers(1, 200)),
)
def test_every_request_gets_exactly_its_own_outputs(
    requests: list[list[tuple[int, str]]],
    window: int,
    fair_share: int,
    streams: int,
    batch_size: int,
    budget: int | None,
) -> None:
    scheduler = Scheduler(
        _echo,
        name="echo",
        batch_size=batch_size,
        max_batch_tokens=budget,
        options=SchedulerOptions(
            window=window, fair_share=fair_share, max_queue_tokens=None, streams=streams
        ),
    )
    plans = [
        Plan([Unit((r, i), tokens, kind) for i, (tokens, kind) in enumerate(units)], lambda out: out)
        for r, units in enumerate(requests)
    ]
    futures = [scheduler.submit(p) for p in plans]
    for r, (future, units) in enumerate(zip(futures, requests, strict=True)):
        assert future.result(timeout=30) == [(kind, (r, i)) for i, (_, kind) in enumerate(units)]
    stats = scheduler.stats()
    assert stats.units == sum(len(u) for u in requests) and stats.waiting_requests == 0
    scheduler.close()


def test_an_error_in_the_scheduler_fails_the_waiting_requests_and_it_serves_on() -> None:
    scheduler = Scheduler(_echo, name="echo", batch_size=4, max_batch_tokens=None, options=SchedulerOptions())
    # a length the worker cannot compare (an injected fault inside the scheduler, not the model)
    broken = scheduler.submit(Plan([Unit("x", 1j, "pair")], lambda out: out))  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="scheduler failed"):
        broken.result(timeout=30)
    assert scheduler.submit(Plan([Unit("y", 3)], lambda out: out)).result(timeout=30) == [("pair", "y")]


def test_a_worker_ended_by_a_base_exception_fails_its_requests_and_is_replaced() -> None:
    def run(kind: str, data: list[Any], owners: list[Any]) -> list[Any]:
        if "exit" in data:
            raise SystemExit("the model called exit")
        return data

    scheduler = Scheduler(
        run, name="exiting", batch_size=4, max_batch_tokens=None, options=SchedulerOptions()
    )
    with pytest.raises(BackendError, match="SystemExit"):
        scheduler.submit(Plan([Unit("exit", 1)], lambda out: out)).result(timeout=30)
    assert scheduler.submit(Plan([Unit("fine", 1)], lambda out: out)).result(timeout=30) == ["fine"]


def test_a_batch_function_returning_the_wrong_count_fails_its_requests_only() -> None:
    def short(kind: str, data: list[Any], owners: list[Any]) -> list[Any]:
        return data[:-1] if "bad" in data else data

    scheduler = Scheduler(
        short, name="short", batch_size=1, max_batch_tokens=None, options=SchedulerOptions()
    )
    bad = scheduler.submit(Plan([Unit("bad", 1)], lambda out: out))
    good = scheduler.submit(Plan([Unit("good", 1)], lambda out: out))
    with pytest.raises(BackendError, match="0 outputs for a batch of 1"):
        bad.result(timeout=30)
    assert good.result(timeout=30) == ["good"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"windows": 3}, "unknown option"),
        ({"window": 0}, "window"),
        ({"max_queue_tokens": -1}, "max_queue_tokens"),
        ("yes", "scheduler must be"),
    ],
)
def test_bad_scheduler_options_are_refused_naming_them(value: Any, message: str) -> None:
    from rerankers_plugins.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        SchedulerOptions.of(value)
