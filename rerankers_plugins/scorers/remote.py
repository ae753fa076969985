"""Rerank servers over HTTP: Hugging Face TEI and the Jina/Cohere-style ``/v1/rerank`` API.

``protocol="tei"``  ``POST {base_url}/rerank`` with ``{"query", "texts", "raw_scores", "truncate"}``;
                    the answer is a list of ``{"index", "score"}`` (Text Embeddings Inference).
``protocol="v1"``   ``POST {base_url}/v1/rerank`` with ``{"model", "query", "documents", "top_n"}``;
                    the answer is ``{"results": [{"index", "relevance_score"}, ...]}`` (vLLM,
                    Infinity, Jina-compatible servers).

Candidates are sent in client-side batches (servers cap documents per request), batches of one
async call run concurrently under a per-scorer bound, and connections are pooled. Scores are
mapped back by ``index``; a missing or repeated index is an error, never a silently lost document.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

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

__all__ = ["RemoteScorer"]

logger = logging.getLogger(__name__)

Protocol = Literal["tei", "v1"]


class RemoteScorer(BaseScorer):
    """Client of a rerank server (TEI, vLLM, Infinity). Scale RELEVANCE (0..1 as the server reports).

    Args:
        base_url: server root, e.g. ``"http://tei:8080"`` (the path is added per protocol).
        protocol: ``"tei"`` or ``"v1"``.
        model: model name sent with ``v1`` requests (vLLM and Infinity serve several).
        api_key: sent as ``Authorization: Bearer ...``; default from ``RERANK_API_KEY``. Never logged.
        timeout: seconds per request (connect, read, write).
        batch_size: documents per request (TEI's default ``--max-client-batch-size`` is 32).
        max_concurrency: requests in flight at once from this scorer (async), and the connection pool size.
        retry: a :class:`~rerankers_plugins.scorers._http.RetryPolicy`.
        on_error: ``"raise"`` (default) or ``"keep_order"``: after the last retry, return every
            candidate in its original order, marked in ``details``, with a warning.
        truncate: ask the server to truncate long inputs (TEI) instead of rejecting them.
    """

    scale = ScoreScale.RELEVANCE

    def __init__(
        self,
        base_url: str,
        *,
        protocol: Protocol = "tei",
        model: str | None = None,
        api_key: str | Secret | None = None,
        timeout: float = 30.0,
        batch_size: int = 32,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        on_error: OnError = "raise",
        truncate: bool = True,
    ) -> None:
        self._httpx = require("httpx", "remote")
        require("tenacity", "remote")
        if protocol not in ("tei", "v1"):
            raise ConfigError(f"protocol must be 'tei' or 'v1', got {protocol!r}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http(s) URL, got {base_url!r}")
        for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.protocol = protocol
        self.model = model
        self.timeout = float(timeout)
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.on_error = check_on_error(on_error)
        self.truncate = truncate
        self._key = secret_from(api_key, "RERANK_API_KEY", required=False, who="RemoteScorer")
        self.path = "/rerank" if protocol == "tei" else "/v1/rerank"
        self.name = f"{protocol}:{model or self.base_url}"
        self._client: Any = None
        self._lock = threading.Lock()
        # One async client and bound per event loop (httpx async clients cannot cross loops),
        # closed when that loop shuts down or this scorer is collected.
        self._async_clients: LoopLocal[tuple[Any, asyncio.Semaphore]] = LoopLocal(self._new_async_client)

    def __repr__(self) -> str:
        return f"RemoteScorer({self.base_url!r}, protocol={self.protocol!r}, model={self.model!r}, api_key={'set' if self._key else None})"

    # -- HTTP plumbing -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    def _limits(self) -> Any:
        return self._httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )

    def _sync_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._httpx.Client(
                    base_url=self.base_url,
                    headers=self._headers(),
                    timeout=self.timeout,
                    limits=self._limits(),
                )
                weakref.finalize(self, self._client.close)  # pooled sockets closed with the scorer
            return self._client

    def _new_async_client(self) -> tuple[tuple[Any, asyncio.Semaphore], Callable[[], Awaitable[None]]]:
        client = self._httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=self.timeout, limits=self._limits()
        )
        return (client, asyncio.Semaphore(self.max_concurrency)), client.aclose

    def close(self) -> None:
        """Close pooled connections now (the sync client; async ones close with their loop)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        """Close the running event loop's pooled connections now."""
        await self._async_clients.aclose()

    def _payload(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        if self.protocol == "tei":
            return {"query": query, "texts": list(texts), "raw_scores": False, "truncate": self.truncate}
        payload: dict[str, Any] = {"query": query, "documents": list(texts), "top_n": len(texts)}
        if self.model is not None:
            payload["model"] = self.model
        return payload

    def _parse(self, response: Any, n: int) -> list[float]:
        who = f"rerank server {self.base_url}{self.path}"
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientError(
                f"{who} answered HTTP {status}",
                status=status,
                retry_after=parse_retry_after(response.headers),
            )
        if status >= 400:
            raise BackendError(f"{who} answered HTTP {status}: {response.text[:300]}")
        try:
            body = response.json()
        except (json.JSONDecodeError, ValueError) as exc:
            raise BackendError(f"{who} answered with malformed JSON: {response.text[:200]!r}") from exc
        try:
            if self.protocol == "tei":
                pairs = [(r["index"], r["score"]) for r in body]
            else:
                pairs = [(r["index"], r["relevance_score"]) for r in body["results"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"{who} answered in an unexpected shape ({exc!r}): {str(body)[:200]}") from exc
        return merge_indexed(pairs, n, who)

    def _transport_error(self, exc: Exception) -> TransientError:
        return TransientError(f"rerank server {self.base_url}{self.path}: {type(exc).__name__}: {exc}")

    def _batches(self, texts: Sequence[str]) -> list[Sequence[str]]:
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    # -- scoring ---------------------------------------------------------------------------------------

    def _post(self, query: str, batch: Sequence[str]) -> list[float]:
        client = self._sync_client()

        def once() -> list[float]:
            try:
                response = client.post(self.path, json=self._payload(query, batch))
            except self._httpx.TransportError as exc:  # timeouts, refused and dropped connections
                raise self._transport_error(exc) from exc
            return self._parse(response, len(batch))

        return self.retry.call(once)

    async def _apost(self, query: str, batch: Sequence[str]) -> list[float]:
        client, bound = await self._async_clients.get()

        async def once() -> list[float]:
            async with bound:
                try:
                    response = await client.post(self.path, json=self._payload(query, batch))
                except self._httpx.TransportError as exc:
                    raise self._transport_error(exc) from exc
            return self._parse(response, len(batch))

        return await self.retry.acall(once)

    def fingerprint(self) -> Mapping[str, Any]:
        return {"base_url": self.base_url, "protocol": self.protocol, "model": self.model}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        out: list[float] = []
        for batch in self._batches(texts):
            out.extend(self._post(query, batch))
        return out

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        parts = await asyncio.gather(*(self._apost(query, b) for b in self._batches(texts)))
        return [s for part in parts for s in part]
