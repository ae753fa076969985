"""Cohere Rerank over the official ``cohere`` SDK (v2 client, sync and async).

Candidate lists larger than the per-request limit are split into several requests and merged by
``index``. The API key comes from the argument or ``COHERE_API_KEY`` and is held as a
:class:`~rerankers_plugins._secret.Secret`: it never appears in reprs, logs or exception messages.
Retries follow the shared policy (429, 5xx, timeouts, connection errors; ``Retry-After`` honoured);
the SDK's own retries are turned off so that the two do not multiply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    check_on_error,
    merge_indexed,
    parse_retry_after,
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
        client: an injected ``cohere.ClientV2`` (tests, proxies, custom httpx clients).
        async_client: an injected ``cohere.AsyncClientV2`` for :meth:`ascore`; built on demand otherwise.
        base_url: a Cohere-compatible endpoint (a proxy, a private deployment).
        timeout: seconds per request.
        max_tokens_per_doc: documents are truncated server-side to this many tokens.
        max_documents_per_request: split larger candidate lists into several requests.
        max_concurrency: requests of one async call in flight at once.
        retry, on_error: see :class:`~rerankers_plugins.RemoteScorer`.
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
        max_tokens_per_doc: int | None = None,
        max_documents_per_request: int = MAX_DOCUMENTS_PER_REQUEST,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self._cohere = require("cohere", "cohere")
        self._httpx = require("httpx", "cohere")
        require("tenacity", "cohere")
        if not 1 <= max_documents_per_request <= MAX_DOCUMENTS_PER_REQUEST:
            raise ConfigError(
                f"max_documents_per_request must be in 1..{MAX_DOCUMENTS_PER_REQUEST}, got {max_documents_per_request}"
            )
        if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
            raise ConfigError(f"max_tokens_per_doc must be a positive int, got {max_tokens_per_doc}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model = model
        self.name = f"cohere:{model}"
        self.base_url = base_url
        self.timeout = float(timeout)
        self.max_tokens_per_doc = max_tokens_per_doc
        self.max_documents_per_request = max_documents_per_request
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.on_error = check_on_error(on_error)
        needs_key = client is None or async_client is None
        self._key = secret_from(
            api_key, "COHERE_API_KEY", required=needs_key and client is None, who="CohereScorer"
        )
        self._client = client
        self._async_client = async_client
        self._async_clients: LoopLocal[Any] = LoopLocal(self._new_async)

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
        if self.base_url:
            kw["base_url"] = self.base_url
        return kw

    def _sync(self) -> Any:
        if self._client is None:
            httpx = require("httpx", "cohere")
            pool = httpx.Client(timeout=self.timeout)
            self._client = self._cohere.ClientV2(**self._client_kwargs(), httpx_client=pool)
            weakref.finalize(self, pool.close)  # pooled sockets closed with the scorer
        return self._client

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        httpx = require("httpx", "cohere")
        pool = httpx.AsyncClient(timeout=self.timeout)
        return self._cohere.AsyncClientV2(**self._client_kwargs(), httpx_client=pool), pool.aclose

    async def _async(self) -> Any:
        """The injected async client, else one per running event loop (an SDK client cannot cross
        loops: a second ``asyncio.run`` gets its own), closed when its loop shuts down."""
        if self._async_client is not None:
            return self._async_client
        return await self._async_clients.get()

    def _request(self, query: str, docs: Sequence[str]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": self.model,
            "query": query,
            "documents": list(docs),
            "top_n": len(docs),
            "request_options": {"max_retries": 0, "timeout_in_seconds": self.timeout},
        }
        if self.max_tokens_per_doc is not None:
            kw["max_tokens_per_doc"] = self.max_tokens_per_doc
        return kw

    def _translate(self, exc: Exception) -> Exception:
        """SDK and transport errors -> TransientError (retried) or BackendError; the key is never included."""
        api_error = self._cohere.core.api_error.ApiError
        if isinstance(exc, api_error):
            status = exc.status_code or 0
            body = str(exc.body)[:300]
            msg = f"Cohere rerank answered HTTP {status}: {body}"
            if status == 429 or status >= 500:
                return TransientError(msg, status=status, retry_after=parse_retry_after(exc.headers))
            return BackendError(msg)
        if isinstance(exc, self._httpx.TransportError):
            return TransientError(f"Cohere rerank: {type(exc).__name__}: {exc}")
        if isinstance(exc, ValueError):  # malformed JSON or a response the SDK cannot parse
            return BackendError(
                f"Cohere rerank answered something unparseable: {type(exc).__name__}: {str(exc)[:200]}"
            )
        return exc

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Re-raise what the SDK raises as :meth:`_translate` says (unknown errors unchanged)."""
        try:
            yield
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc

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
        client = self._sync()
        out: list[float] = []
        for chunk in self._chunks(texts):

            def once(chunk: Sequence[str] = chunk) -> list[float]:
                with self._sdk_errors():
                    response = client.rerank(**self._request(query, chunk))
                return self._merge(response, len(chunk))

            out.extend(self.retry.call(once))
        return out

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        client = await self._async()
        bound = asyncio.Semaphore(self.max_concurrency)

        async def one(chunk: Sequence[str]) -> list[float]:
            async def once() -> list[float]:
                async with bound:
                    with self._sdk_errors():
                        response = await client.rerank(**self._request(query, chunk))
                return self._merge(response, len(chunk))

            return await self.retry.acall(once)

        parts = await asyncio.gather(*(one(c) for c in self._chunks(texts)))
        return [s for part in parts for s in part]
