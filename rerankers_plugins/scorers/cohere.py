"""Cohere Rerank over the official ``cohere`` SDK (v2 client, sync and async).

Candidate lists larger than the per-request limit are split into several requests and merged by
``index``. The API key comes from the argument or ``COHERE_API_KEY`` and is held as a
:class:`~rerankers_plugins._secret.Secret`: it never appears in reprs, logs or exception messages.
Retries follow the shared policy (429, 5xx, timeouts, connection errors; ``Retry-After`` honoured);
the SDK's own retries are turned off so that the two do not multiply. One deadline bounds every
call, whichever client makes it: an injected sync client's requests run in a worker thread that the
call stops waiting for at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins._secret import Secret, secret_from
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._http import (
    LoopLocal,
    OnError,
    RetryPolicy,
    TransientError,
    bounded,
    check_on_error,
    gather_cancelling,
    hide_in_http_logs,
    in_thread,
    merge_indexed,
    parse_retry_after,
    redact,
    resolve_deadline,
    run_sync,
    split_query,
    url_secrets,
    wait_until,
)
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import ScoreScale

__all__ = ["CohereScorer"]

logger = logging.getLogger(__name__)

MAX_DOCUMENTS_PER_REQUEST = 1000  # Cohere's documented limit per rerank call


class CohereScorer(BaseScorer):
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
        max_tokens_per_doc: documents are truncated server-side to this many tokens.
        max_documents_per_request: split larger candidate lists into several requests.
        max_concurrency: requests of one async call in flight at once.
        retry, on_error: see :class:`~rerankers_plugins.RemoteScorer`.

    Without an injected ``client`` the sync methods run the async path (``asyncio.run``: one
    deadline, cancellation of sibling chunks). Each event loop gets its own async client: one
    scorer serves any number of threads and event loops at once. Credentials in ``base_url`` are
    redacted everywhere they would show.
    Pickling keeps the settings, not the key (re-read from ``COHERE_API_KEY``); a scorer with
    injected clients cannot be pickled.
    """

    scale = ScoreScale.RELEVANCE

    def __init__(
        self,
        model: str = "rerank-v3.5",
        *,
        api_key: str | Secret | None = None,
        client: Any | None = None,
        async_client: Any | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        max_tokens_per_doc: int | None = None,
        max_documents_per_request: int = MAX_DOCUMENTS_PER_REQUEST,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self._cohere = require("cohere", "cohere")
        self._httpx = require("httpx", "cohere")
        if not 1 <= max_documents_per_request <= MAX_DOCUMENTS_PER_REQUEST:
            raise ConfigError(
                f"max_documents_per_request must be in 1..{MAX_DOCUMENTS_PER_REQUEST}, got {max_documents_per_request}"
            )
        if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
            raise ConfigError(f"max_tokens_per_doc must be a positive int, got {max_tokens_per_doc}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model = model
        self.name = f"cohere:{model}"
        self._url = Secret(base_url) if base_url else None  # may hold credentials: never shown
        self._secrets = url_secrets(base_url) if base_url else []
        hide_in_http_logs(self, self._secrets)
        self.base_url = redact(base_url, self._secrets) if base_url else None
        self.timeout = float(timeout)
        self.deadline = resolve_deadline(deadline, self.timeout)
        self.max_tokens_per_doc = max_tokens_per_doc
        self.max_documents_per_request = max_documents_per_request
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.on_error = check_on_error(on_error)
        self._key = secret_from(
            api_key, "COHERE_API_KEY", required=client is None and async_client is None, who="CohereScorer"
        )
        self._key_from_env = api_key is None
        if self._key is not None:
            self._secrets.append(self._key)
        self._client = client
        self._async_client = async_client
        # the event loop the injected async client runs on (the first one to use it)
        self._async_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._async_loop_lock = threading.Lock()
        self._async_clients: LoopLocal[Any] = LoopLocal(self._new_async)

    def __copy__(self) -> CohereScorer:
        return self  # settings are fixed after construction; the key stays with the one object

    def __deepcopy__(self, memo: dict[int, Any]) -> CohereScorer:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings, without the key (re-read from ``COHERE_API_KEY`` on load)."""
        if self._client is not None or self._async_client is not None:
            raise TypeError("a CohereScorer with injected clients cannot be pickled; build it from settings")
        if self._url is not None and url_secrets(self._url.get_secret_value()):
            raise TypeError(
                "a CohereScorer whose base_url holds credentials cannot be pickled (they would be "
                "written out in plain text): pass the key as api_key / COHERE_API_KEY instead"
            )
        settings = {
            "base_url": self._url.get_secret_value() if self._url is not None else None,
            "timeout": self.timeout,
            "deadline": self.deadline,
            "max_tokens_per_doc": self.max_tokens_per_doc,
            "max_documents_per_request": self.max_documents_per_request,
            "max_concurrency": self.max_concurrency,
            "retry": self.retry,
            "on_error": self.on_error,
        }
        return (_rebuild, (self.model, settings))

    def __repr__(self) -> str:
        return f"CohereScorer(model={self.model!r}, base_url={self.base_url!r}, api_key={'set' if self._key else None})"

    def _client_kwargs(self) -> dict[str, Any]:
        if self._key is None:
            raise ConfigError("CohereScorer needs an API key: pass api_key=... or set COHERE_API_KEY")
        kw: dict[str, Any] = {
            "api_key": self._key.get_secret_value(),
            "timeout": self.timeout,
            "max_retries": 0,
        }
        if self._url is not None:
            kw["base_url"] = split_query(self._url.get_secret_value())[0]
        return kw

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        httpx = require("httpx", "cohere")
        params = split_query(self._url.get_secret_value())[1] if self._url is not None else []
        pool = httpx.AsyncClient(timeout=self.timeout, params=params)
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
        if self.max_tokens_per_doc is not None:
            kw["max_tokens_per_doc"] = self.max_tokens_per_doc
        return kw

    def _translate(self, exc: Exception) -> BackendError:
        """SDK and transport errors -> TransientError (retried) or BackendError; the key is never included."""
        if isinstance(exc, BackendError):  # ours already (a deadline, a foreign loop)
            return exc
        api_error = self._cohere.core.api_error.ApiError
        if isinstance(exc, api_error):
            status = exc.status_code or 0
            body = redact(str(exc.body), self._secrets)[:300]
            msg = f"Cohere rerank answered HTTP {status}: {body}"
            if status == 429 or status >= 500:
                return TransientError(msg, status=status, retry_after=parse_retry_after(exc.headers))
            return BackendError(msg)
        if isinstance(exc, self._httpx.TransportError):
            return TransientError(redact(f"Cohere rerank: {type(exc).__name__}: {exc}", self._secrets))
        if isinstance(exc, ValueError):  # malformed JSON or a response the SDK cannot parse
            return BackendError(
                redact(
                    f"Cohere rerank answered something unparseable: {type(exc).__name__}: {exc}",
                    self._secrets,
                )[:300]
            )
        # anything else the SDK raises (a client used after its loop closed, an unexpected shape)
        return BackendError(redact(f"Cohere rerank failed: {type(exc).__name__}: {exc}", self._secrets)[:300])

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Re-raise what the SDK raises as :meth:`_translate` says: always a ``BackendError``."""
        try:
            yield
        except Exception as exc:
            # not chained: the SDK's error text carries the unredacted body and headers
            raise self._translate(exc) from None

    def _merge(self, response: Any, n: int) -> list[float]:
        try:
            pairs = [(r.index, r.relevance_score) for r in response.results]
        except (AttributeError, TypeError) as exc:
            raise BackendError(f"Cohere rerank answered in an unexpected shape: {exc!r}") from exc
        return merge_indexed(pairs, n, f"Cohere rerank ({self.model})")

    def _chunks(self, texts: Sequence[str]) -> list[Sequence[str]]:
        k = self.max_documents_per_request
        return [texts[i : i + k] for i in range(0, len(texts), k)]

    def fingerprint(self) -> Mapping[str, Any]:
        return {"model": self.model, "base_url": self.base_url, "max_tokens_per_doc": self.max_tokens_per_doc}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._client is None:
            scores: list[float] = run_sync(self.ascore(query, texts))
            return scores
        client = self._client  # injected sync client: each request in a worker thread
        end = time.monotonic() + self.deadline
        out: list[float] = []
        for chunk in self._chunks(texts):

            def once(chunk: Sequence[str] = chunk) -> list[float]:
                request = self._request(query, chunk, end)
                with self._sdk_errors():
                    response = wait_until(in_thread(lambda: client.rerank(**request)), end, self.name)
                return self._merge(response, len(chunk))

            out.extend(self.retry.call(once, end=end, who=self.name))
        return out

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        bound = asyncio.Semaphore(self.max_concurrency)

        async def one(
            rerank: Callable[..., Awaitable[Any]], chunk: Sequence[str], end: float | None
        ) -> list[float]:
            async def once() -> list[float]:
                async with bound:
                    with self._sdk_errors():
                        response = await rerank(**self._request(query, chunk, end))
                return self._merge(response, len(chunk))

            return await self.retry.acall(once, end=end, who=self.name)

        async with bounded(self.deadline, self.name) as end:
            rerank = await self._rerank_call()
            parts = await gather_cancelling([one(rerank, c, end) for c in self._chunks(texts)])
        return [s for part in parts for s in part]


def _rebuild(model: str, settings: dict[str, Any]) -> CohereScorer:
    return CohereScorer(model, **settings)
