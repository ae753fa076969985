"""What the five local-model scorers (cross-encoder, bi-encoder, ColBERT, poly-encoder, seq2seq)
share: :class:`LocalScorer`, over the one loader of :mod:`~rerankers_plugins.scorers._hf` and the
one scheduler of :mod:`~rerankers_plugins.scorers._scheduler`."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from rerankers_plugins.errors import BackendError
from rerankers_plugins.scorers._aio import check_deadline
from rerankers_plugins.scorers._compile import (
    CompiledBlocks,
    CompileSetting,
    check_compile,
    compile_blocks,
    resolve_compile,
)
from rerankers_plugins.scorers._hf import Checkpoint, load_options
from rerankers_plugins.scorers._http import OnError, check_on_error
from rerankers_plugins.scorers._scheduler import (
    Plan,
    QueueStats,
    Scheduler,
    SchedulerOptions,
    in_rounds,
    late,
    run_plan,
)
from rerankers_plugins.scorers.base import BaseScorer

__all__ = ["LocalScorer"]


class LocalScorer(BaseScorer):
    """What the five local-model scorers share: a :class:`Checkpoint` opened once in the
    constructor (:meth:`_open`), its device, dtype, token budget and model name, the tokenizer,
    a copy that reloads the model from its files, and how calls reach the model.

    A call is planned in the caller's thread (:meth:`_plan`: tokenized and checked, so bad input
    fails there) and its units are computed in batches by :meth:`_run_batch`: by the scorer's one
    worker, packed with other callers' units (:class:`Scheduler`, the default), or in the caller's
    thread with ``scheduler=False``. ``deadline`` bounds a call, queueing included; past it the call
    raises :class:`DeadlineExceeded` (with ``on_error="keep_order"`` a pipeline passes the
    candidates on, marked, as for the HTTP scorers).
    """

    rebuild_on_copy = True  # a copy reloads the model from its files

    checkpoint: Checkpoint
    device: str
    dtype: Any
    max_batch_tokens: int | None
    max_length: int
    model: str
    batch_size: int
    deadline: float | None
    on_error: OnError
    #: how concurrent calls share the model (None: each call computes in its own thread)
    scheduler_options: SchedulerOptions | None
    _tokenizer: Any
    #: the compiled transformer blocks (``compile=``): how many, still active, seconds at load
    compiled: CompiledBlocks
    _scheduler: Scheduler | None = None
    _closed: bool = False

    def _serve(self, deadline: float | None, on_error: str, scheduler: Any, compile: Any) -> None:
        """Record how calls reach the model (the constructors' ``deadline``, ``on_error`` and
        ``scheduler``; the worker starts with the first call) and whether its blocks are compiled
        (``compile``, applied by :meth:`_accelerate` once the model is loaded)."""
        self.deadline = check_deadline(deadline)
        self.on_error = check_on_error(on_error)
        self.scheduler_options = SchedulerOptions.of(scheduler)
        self._scheduler_lock = threading.Lock()
        self.compile: CompileSetting = check_compile(compile)
        self.compiled = CompiledBlocks()  # none until _accelerate compiles

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        """The call made ready for the model: its units (token rows, texts to encode) and how their
        outputs become the scores. Runs in the caller's thread; raises on bad input."""
        raise NotImplementedError

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        """One batch of units of one ``kind``, possibly from several calls (``owners``)."""
        raise NotImplementedError

    def _queue(self) -> Scheduler | None:
        if self._closed:
            raise BackendError(f"{self.name}: the scorer was closed")
        if self.scheduler_options is None:
            return None
        with self._scheduler_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(
                    self._run_batch,
                    name=self.name,
                    batch_size=self.batch_size,
                    max_batch_tokens=self.max_batch_tokens,
                    options=self.scheduler_options,
                )
                weakref.finalize(self, self._scheduler.close, "the scorer was garbage-collected")
            return self._scheduler

    def _left(self, start: float) -> float | None:
        """Seconds left of this call's deadline (planning took some); DeadlineExceeded when none."""
        if self.deadline is None:
            return None
        left = self.deadline - (time.monotonic() - start)
        if left <= 0:
            raise late(self.name, self.deadline)
        return left

    def _accelerate(self, *models: Any) -> None:
        """Compile the transformer blocks of ``models`` where ``compile=`` says so
        (:mod:`~rerankers_plugins.scorers._compile`), paying the compile now: a batch of one unit
        and one of two units of each kind the scorer computes, run straight to the model (no
        document cache is filled, no request waits for it)."""
        if not resolve_compile(self.compile, self.device, self.dtype):
            return
        self.compiled = compile_blocks(models)

        def run(texts: Sequence[str]) -> None:
            units = self._plan("warm up", texts).units
            for kind in dict.fromkeys(u.kind for u in units):
                mine = [u.data for u in units if u.kind == kind]
                self._run_batch(kind, mine, [0] * len(mine))

        def warm() -> None:
            run(["warm up"])
            run(["warm up", "warm up, with a second and longer text"])

        self.compiled.warm(warm)
        if self.compile == "auto":  # kept only where it measures faster than eager on this machine
            # a full batch of distinct texts (a document cache would make one unit of equal ones)
            # that fit the window (a truncation warning here would be the scorer's one warning)
            words = max(4, self.max_length // 3)
            rows = max(2, (self.max_batch_tokens or 1024) // max(8, self.max_length // 2))
            texts = [f"{i} " + " ".join(["warm"] * words) for i in range(rows)]
            self.compiled.keep_if_faster(lambda: run(texts))

    def _score_here(self, query: str, texts: Sequence[str]) -> list[float]:
        """Score in this thread, bypassing the worker (warm-up at load)."""
        return run_plan(self._plan(query, texts), self._run_batch, self.batch_size, self.max_batch_tokens)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        joined = in_rounds.get()
        if joined is not None:  # a batch job's block: computed with the block's other calls
            rounds, index = joined
            plan = self._plan(query, texts)
            return plan.finish(rounds.call(index, self, plan))
        start = time.monotonic()
        queue = self._queue()
        plan = self._plan(query, texts)
        if queue is None:
            return run_plan(
                plan, self._run_batch, self.batch_size, self.max_batch_tokens, self._left(start), self.name
            )
        return plan.finish(queue.result(plan, self._left(start)))

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        queue = self._queue()
        if queue is None:
            return await asyncio.to_thread(self.score, query, texts)
        start = time.monotonic()
        plan = await asyncio.to_thread(self._plan, query, texts)
        outputs = await queue.aresult(plan, self._left(start))
        return await asyncio.to_thread(plan.finish, outputs)

    def queue_stats(self) -> QueueStats | None:
        """The worker's queue and batches (depth, batch sizes in units and tokens, recent requests'
        wait and compute times); None with ``scheduler=False``."""
        queue = self._queue()
        return None if queue is None else queue.stats()

    def close(self) -> None:
        """End the calls waiting for this scorer's worker with a BackendError and stop it; later
        calls raise. (A scorer that is garbage-collected does the same.)"""
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.close()

    def _open(
        self,
        model: str,
        device: str | None,
        dtype: str,
        max_batch_tokens: int | str | None,
        load: Mapping[str, Any],
        **how: Any,
    ) -> Checkpoint:
        """:meth:`Checkpoint.open` for this scorer (``load``: its ``**load`` keywords; ``how``:
        ``extra``, ``precision``), recorded as its ``checkpoint``, ``device``, ``dtype``,
        ``max_batch_tokens``, ``model`` and ``name``."""
        options = load_options(type(self).__name__, load)
        ckpt = Checkpoint.open(
            model, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens, options=options, **how
        )
        self.checkpoint, self.device, self.dtype = ckpt, ckpt.device, ckpt.dtype
        self.max_batch_tokens, self.model, self.name = ckpt.max_batch_tokens, model, model
        return ckpt

    def fingerprint(self) -> Mapping[str, Any]:
        """What the scores depend on: the model, its token window and dtype, the scorer's own
        settings (:meth:`settings`), and the checkpoint's files digest and revision (a model
        retrained in place, even only a ``1_Dense/`` module, is another model)."""
        return {
            "model": self.name,
            "max_length": self.max_length,
            "dtype": str(self.dtype),
            **self.score_settings(),
            **self.checkpoint.fingerprint(),
        }

    def score_settings(self) -> Mapping[str, Any]:
        """The settings besides model, window and dtype that change this scorer's scores."""
        return {}

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (to count tokens as the model sees them)."""
        return self._tokenizer
