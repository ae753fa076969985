"""Cohere Rerank over the official ``cohere`` SDK (v2 client, sync and async).

Candidate lists larger than ``batch_size`` (at most the API's 1,000 documents per request) are
split into several requests and merged by ``index``. The API key comes from the argument or ``COHERE_API_KEY`` and is held as a
:class:`~rerankers_plugins._secret.Secret`: it never appears in reprs, logs or exception messages.
Retries follow the shared policy (429, 5xx, timeouts, connection errors; ``Retry-After`` honoured);
the SDK's own retries are turned off so that the two do not multiply. One deadline bounds every
call, whichever client makes it: an injected sync client's requests run in a worker thread that the
call stops waiting for at the deadline. What the API backends share (options, secrets, per-loop
clients, batches, retries, pickling, rate limits, usage) is
:class:`~rerankers_plugins.scorers._http.HTTPScorer`'s; this module is the Cohere protocol, the SDK
client path, and how Cohere bills: search units.

Search units: Cohere bills one search unit per query of up to 100 documents (a document longer
than the model's context, query included, is split into chunks that count as documents). Before a
request is sent it is estimated at ``ceil(documents / 100)`` units, a lower bound; the answer's
``meta.billed_units.search_units`` then replaces the estimate, in ``usage``, in the rate limiter's
window and in the ``max_search_units`` budget. A request sent and never answered keeps its
estimate in the window and spends it on the budget (it may have been billed); ``usage`` shows
only what answers said was billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from rerankers_plugins._optional import require
from rerankers_plugins._secret import CredentialURL, Secret
from rerankers_plugins._validate import as_int
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._aio import in_thread, wait_until
from rerankers_plugins.scorers._http import Answer, Gate, HTTPScorer, OnError, Send, merge_indexed
from rerankers_plugins.scorers.limits import Budget, RateLimit, usage_from
from rerankers_plugins.scorers.retry import RetryPolicy
from rerankers_plugins.templates import TemplateLike
from rerankers_plugins.types import ScoreScale

__all__ = ["CohereScorer"]

MAX_DOCUMENTS_PER_REQUEST = 1000  # Cohere's documented limit per rerank call
DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere bills one search unit per query of up to 100 documents


class CohereScorer(HTTPScorer):
    """Cohere Rerank. Scale RELEVANCE (0..1).

    Args:
        model: Cohere rerank model, e.g. ``"rerank-v3.5"``.
        api_key: the key, or None to read ``COHERE_API_KEY`` (not needed when ``client`` is given).
        client: an injected ``cohere.ClientV2`` (tests, proxies, custom httpx clients). It serves
            the sync methods, and :meth:`ascore` too when no ``async_client`` is given (in a worker
            thread, so the event loop is never blocked).
        async_client: an injected ``cohere.AsyncClientV2`` for :meth:`ascore`. An async client
            belongs to the event loop it first runs on (its connections cannot cross loops): calls
            from any other loop, and sync calls without ``client``, use ``client`` when given and
            fail with a ``BackendError`` otherwise. Without injected clients one is built per loop.
        base_url: a Cohere-compatible endpoint (a proxy, a private deployment).
        timeout: seconds per request operation (connect, each read, write): it does not bound a
            call, since a server that trickles its answer never lets a read time out.
        deadline: total seconds one call may take (requests, retries, waits, all chunks), whatever
            the client, injected ones included; past it ``DeadlineExceeded`` (a ``BackendError``,
            so ``on_error="keep_order"`` falls back). None (default): ``4 * timeout``
            (``DEFAULT_DEADLINE_FACTOR``: room for the default four attempts, each cut by its
            timeout; 120 s with the default timeout). An injected sync client's request runs in a
            worker thread that the call stops waiting for at the deadline; that thread ends when
            the SDK's request timeout (capped at the time left) does.
        max_length: documents are truncated server-side to this many tokens (sent as the API's
            ``max_tokens_per_doc``). Formerly ``max_tokens_per_doc=``, still accepted with a
            FutureWarning.
        batch_size: documents per request, at most 1000 (the API's limit); larger candidate lists
            are split into several requests. Formerly ``max_documents_per_request=``, still
            accepted with a FutureWarning.
        max_concurrency: requests of one async call in flight at once.
        retry, on_error: see :class:`~rerankers_plugins.RemoteScorer`.
        rate_limit: a :class:`~rerankers_plugins.scorers.limits.RateLimit` shared by every scorer
            of the same key and ``base_url`` in the process (threads and event loops included):
            ``requests_per_minute`` (a trial key allows 10) and ``units_per_minute`` (search units,
            estimated ``ceil(documents / 100)`` per request, then as billed). Every attempt waits
            for its turn; a 429 pauses every caller of the key; a request that could not start
            before the deadline raises ``DeadlineExceeded`` unsent. None (default): no limit.
        max_search_units: a budget: a call whose estimate (``ceil(documents / 100)`` per request)
            would take the search units spent (``usage.search_units``, as billed, plus the
            estimates of requests sent and never answered: abandoned at the deadline, cancelled,
            cut by a dropped connection) past it is refused with ``BudgetExceeded`` before anything
            is sent (not a ``BackendError``, so ``on_error="keep_order"`` does not hide it);
            ``reset_usage()`` starts a new budget. None (default): no budget.
        document_template: what the model reads of each candidate (None: its text). A list of
            field names, ``["title", "text"]``, sends each candidate in the structured form Cohere
            documents for rerank-v3 and later (a YAML document per candidate, keys in the order
            given); a format string or a function as for
            :class:`~rerankers_plugins.CrossEncoderScorer`.

    Without an injected ``client`` the sync methods run the async path (``asyncio.run``: one
    deadline, cancellation of sibling chunks). Each event loop gets its own async client: one
    scorer serves any number of threads and event loops at once. Credentials in ``base_url`` are
    redacted everywhere they would show.
    Pickling keeps the settings, not the key (re-read from ``COHERE_API_KEY``); a scorer with
    injected clients cannot be pickled. ``usage`` is what its calls spent (requests, and the
    answers' ``meta.billed_units``: search units, tokens where reported).
    """

    scale = ScoreScale.RELEVANCE
    extra = "cohere"
    key_env = "COHERE_API_KEY"
    max_batch_size = MAX_DOCUMENTS_PER_REQUEST
    renamed: ClassVar[Mapping[str, str]] = {
        "max_documents_per_request": "batch_size",
        "max_tokens_per_doc": "max_length",
    }

    def __init__(
        self,
        model: str = "rerank-v3.5",
        *,
        api_key: str | Secret | None = None,
        client: Any | None = None,
        async_client: Any | None = None,
        base_url: CredentialURL | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        max_length: int | None = None,
        batch_size: int = MAX_DOCUMENTS_PER_REQUEST,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        on_error: OnError = "raise",
        rate_limit: RateLimit | None = None,
        max_search_units: int | None = None,
        document_template: TemplateLike | None = None,
    ) -> None:
        self._cohere = require("cohere", "cohere")
        self.max_search_units = as_int(max_search_units, "max_search_units", minimum=1, allow_none=True)
        super().__init__(
            base_url,
            api_key=api_key,
            key_required=client is None and async_client is None,
            timeout=timeout,
            deadline=deadline,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            retry=retry,
            on_error=on_error,
            rate_limit=rate_limit,
            document_template=document_template,
            clients=(client, async_client),
        )
        if self.max_search_units is not None:
            self._budget = Budget(self.max_search_units, "search units", "max_search_units")
        self.max_length = as_int(max_length, "max_length", minimum=1, allow_none=True)
        self.model = model
        self.name = f"cohere:{model}"
        self._client = client
        self._async_client = async_client
        # the event loop the injected async client runs on (the first one to use it)
        self._async_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._async_loop_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._client is not None or self._async_client is not None:
            raise TypeError("a CohereScorer with injected clients cannot be pickled; build it from settings")
        return super().__reduce__()

    def _settings(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        own = {
            "base_url": self._raw_url,
            "max_length": self.max_length,
            "max_search_units": self.max_search_units,
        }
        return (self.model,), own

    # -- search units ------------------------------------------------------------------------------------

    def _units(self, batch: Sequence[str]) -> int:
        return math.ceil(len(batch) / DOCUMENTS_PER_SEARCH_UNIT)

    def _estimate_rule(self, batches: Sequence[Sequence[str]]) -> str:
        n = sum(len(b) for b in batches)
        return f" (ceil(documents / 100) per request: {n} documents in {len(batches)} request(s))"

    def _check_rate_limit(self, limit: RateLimit) -> None:
        most = math.ceil(self.batch_size / DOCUMENTS_PER_SEARCH_UNIT)
        if limit.units_per_minute is not None and limit.units_per_minute < most:
            raise ConfigError(
                f"CohereScorer: a request of batch_size={self.batch_size} documents costs up to {most} "
                f"search units, more than RateLimit(units_per_minute={limit.units_per_minute}) allows "
                f"in a minute: lower batch_size to {limit.units_per_minute * DOCUMENTS_PER_SEARCH_UNIT} "
                "or raise units_per_minute"
            )

    def _repr_args(self) -> str:
        return f"model={self.model!r}, base_url={self.base_url!r}"

    def _client_kwargs(self) -> dict[str, Any]:
        if self._key is None:
            raise ConfigError("CohereScorer needs an API key: pass api_key=... or set COHERE_API_KEY")
        kw: dict[str, Any] = {
            "api_key": self._key.get_secret_value(),
            "timeout": self.timeout,
            "max_retries": 0,
        }
        base = self._split_url()[0]
        if base is not None:
            kw["base_url"] = base
        return kw

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        pool = self._httpx.AsyncClient(timeout=self.timeout, params=self._split_url()[1])
        return self._cohere.AsyncClientV2(**self._client_kwargs(), httpx_client=pool), pool.aclose

    def _owns_async_client(self) -> bool:
        """Whether the running loop is the injected async client's (the first loop to use it)."""
        loop = asyncio.get_running_loop()
        with self._async_loop_lock:
            if self._async_loop is None:  # bound once: after its loop ends, no loop owns it
                self._async_loop = weakref.ref(loop)
            return self._async_loop() is loop

    async def _rerank_call(self) -> Callable[..., Awaitable[Any]]:
        """The async ``rerank(**kw)`` this loop uses: the injected async client on its own loop;
        else the injected sync client in a worker thread (awaited, so the deadline applies);
        else one SDK client per running event loop (an SDK client cannot cross loops: a second
        ``asyncio.run`` gets its own), closed when its loop shuts down."""
        if self._async_client is not None and self._owns_async_client():
            return self._async_client.rerank  # type: ignore[no-any-return]
        client = self._client
        if client is not None:

            async def threaded(**kw: Any) -> Any:
                return await asyncio.wrap_future(in_thread(lambda: client.rerank(**kw)))

            return threaded
        if self._async_client is not None:
            raise BackendError(
                f"{self.name}: the injected async_client runs on another event loop, and an async "
                "client cannot cross loops; inject client= (a cohere.ClientV2) too for the other "
                "loops and for sync calls, or build the scorer from base_url= / api_key="
            )
        return (await self._async_clients.get()).rerank  # type: ignore[no-any-return]

    def _request(self, query: str, docs: Sequence[str], end: float | None = None) -> dict[str, Any]:
        timeout = self.timeout if end is None else max(min(self.timeout, end - time.monotonic()), 0.001)
        kw: dict[str, Any] = {
            "model": self.model,
            "query": query,
            "documents": list(docs),
            "top_n": len(docs),
            "request_options": {"max_retries": 0, "timeout_in_seconds": timeout},
        }
        if self.max_length is not None:
            kw["max_tokens_per_doc"] = self.max_length  # the API's name for it
        return kw

    def _translate(self, exc: Exception) -> BackendError:
        """SDK and transport errors -> TransientError (retried) or BackendError; the key is never included."""
        if isinstance(exc, BackendError):  # ours already (a deadline, a foreign loop)
            return exc
        if isinstance(exc, self._cohere.core.api_error.ApiError):
            return self._status_error("Cohere rerank", exc.status_code or 0, exc.headers, str(exc.body))
        if isinstance(exc, self._httpx.TransportError):
            return self._client_error("Cohere rerank", exc)
        if isinstance(exc, ValueError):  # malformed JSON or a response the SDK cannot parse
            return BackendError(
                self._redact(f"Cohere rerank answered something unparseable: {type(exc).__name__}: {exc}")[
                    :300
                ]
            )
        # anything else the SDK raises (a client used after its loop closed, an unexpected shape)
        return BackendError(self._redact(f"Cohere rerank failed: {type(exc).__name__}: {exc}")[:300])

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Re-raise what the SDK raises as :meth:`_translate` says: always a ``BackendError``."""
        try:
            yield
        except Exception as exc:
            # not chained: the SDK's error text carries the unredacted body and headers
            raise self._translate(exc) from None

    def _merge(self, response: Any, n: int) -> Answer:
        try:
            pairs = [(r.index, r.relevance_score) for r in response.results]
        except (AttributeError, TypeError) as exc:
            raise BackendError(f"Cohere rerank answered in an unexpected shape: {exc!r}") from exc
        scores = merge_indexed(pairs, n, f"Cohere rerank ({self.model})")
        billed = getattr(getattr(response, "meta", None), "billed_units", None)
        usage = usage_from(billed)
        units = (
            usage.search_units
            if usage is not None and getattr(billed, "search_units", None) is not None
            else None
        )
        return Answer(scores, usage, units)

    def fingerprint(self) -> Mapping[str, Any]:
        # "max_tokens_per_doc": the API's name, kept so that cached scores stay valid
        return {"model": self.model, "base_url": self.base_url, "max_tokens_per_doc": self.max_length}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts or self._client is None:
            return super().score(query, texts)
        client = self._client  # injected sync client: each request in a worker thread
        end = time.monotonic() + self.deadline
        batches = self._batches(texts)
        out: list[float] = []
        with self._held(batches) as hold:
            for batch in batches:

                def once(batch: Sequence[str]) -> Answer:
                    request = self._request(query, batch, end)
                    with self._sdk_errors():
                        response = wait_until(in_thread(lambda: client.rerank(**request)), end, self.name)
                    return self._merge(response, len(batch))

                out.extend(
                    self.retry.call(self._attempts_sync(once, batch, end, hold), end=end, who=self.name)
                )
        return out

    async def _sender(self, query: str, end: float | None) -> Send:
        rerank = await self._rerank_call()
        bound = asyncio.Semaphore(self.max_concurrency)  # per call: an injected client has no pool of ours

        async def send(batch: Sequence[str], gate: Gate) -> Answer:
            async with bound:
                await gate()
                with self._sdk_errors():
                    response = await rerank(**self._request(query, batch, end))
            return self._merge(response, len(batch))

        return send
