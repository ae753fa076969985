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
import math
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
    bounded,
    check_on_error,
    gather_cancelling,
    hide_in_http_logs,
    merge_indexed,
    parse_retry_after,
    redact,
    resolve_deadline,
    run_sync,
    split_query,
    url_secrets,
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
            Credentials inside it (``http://user:KEY@host``, ``?api_key=KEY``) are used for requests
            and redacted (``***``) in the name, repr, details, logs and errors.
        protocol: ``"tei"`` or ``"v1"``.
        path: the endpoint, default ``/rerank`` (tei) or ``/v1/rerank`` (v1); Infinity serves the
            v1 body at ``/rerank`` (``protocol="v1", path="/rerank"``).
        model: model name sent with ``v1`` requests (vLLM and Infinity serve several).
        api_key: sent as ``Authorization: Bearer ...``; default from ``RERANK_API_KEY``. Never logged.
        timeout: seconds per request operation (connect, read, write, each). It does not bound a
            call: a server that trickles its answer never lets a read time out.
        deadline: total seconds one ``score`` / ``ascore`` call may take, everything included
            (connect, read, retries, back-off, all batches); past it the call raises
            ``DeadlineExceeded`` (a ``BackendError``, so ``on_error="keep_order"`` falls back).
            None (default): ``4 * timeout`` (``DEFAULT_DEADLINE_FACTOR``: room for the default
            four attempts, each cut by its timeout; 120 s with the default ``timeout=30``).
        batch_size: documents per request (TEI's default ``--max-client-batch-size`` is 32).
        max_concurrency: requests in flight at once from this scorer, and the connection pool size.
        retry: a :class:`~rerankers_plugins.scorers._http.RetryPolicy`.
        on_error: ``"raise"`` (default) or ``"keep_order"``: after the last retry, return every
            candidate in its original order, marked in ``details``, with a warning.
        truncate: ask the server to truncate long inputs (TEI) instead of rejecting them.

    Batches of one call run concurrently; when one fails for good, its siblings are cancelled.
    The sync methods run the async path (``asyncio.run``), so both share deadline and cancellation;
    connections are pooled per event loop (a sync call opens its own). One scorer serves any number
    of threads and event loops at once. Pickling keeps the settings, not the key: an unpickled
    scorer reads ``RERANK_API_KEY`` again (a ``base_url`` holding credentials cannot be pickled).
    """

    scale = ScoreScale.RELEVANCE

    def __init__(
        self,
        base_url: str,
        *,
        protocol: Protocol = "tei",
        path: str | None = None,
        model: str | None = None,
        api_key: str | Secret | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        batch_size: int = 32,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        on_error: OnError = "raise",
        truncate: bool = True,
    ) -> None:
        self._httpx = require("httpx", "remote")
        if protocol not in ("tei", "v1"):
            raise ConfigError(f"protocol must be 'tei' or 'v1', got {protocol!r}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url must be an http(s) URL")
        for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        url = base_url.rstrip("/")
        self._url = Secret(url)  # may hold credentials: used for requests, never shown
        self._secrets = url_secrets(url)
        hide_in_http_logs(self, self._secrets)
        self.base_url = redact(url, self._secrets)
        self.protocol = protocol
        self.model = model
        self.timeout = float(timeout)
        self.deadline = resolve_deadline(deadline, self.timeout)
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.on_error = check_on_error(on_error)
        self.truncate = truncate
        self._key = secret_from(api_key, "RERANK_API_KEY", required=False, who="RemoteScorer")
        self._key_from_env = api_key is None
        if self._key is not None:
            self._secrets.append(self._key)
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigError(f"path must start with '/', got {path!r}")
        self.path = path or ("/rerank" if protocol == "tei" else "/v1/rerank")
        self.name = f"{protocol}:{model or self.base_url}"
        # One async client and bound per event loop (httpx async clients cannot cross loops),
        # closed when that loop shuts down or this scorer is collected.
        self._async_clients: LoopLocal[tuple[Any, asyncio.Semaphore]] = LoopLocal(self._new_async_client)

    def __repr__(self) -> str:
        return (
            f"RemoteScorer({self.base_url!r}, protocol={self.protocol!r}, model={self.model!r}, "
            f"api_key={'set' if self._key else None})"
        )

    def __copy__(self) -> RemoteScorer:
        return self  # settings are fixed after construction; the key stays with the one object

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteScorer:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings, without the key (re-read from ``RERANK_API_KEY`` on load)."""
        if url_secrets(self._url.get_secret_value()):
            raise TypeError(
                "a RemoteScorer whose base_url holds credentials cannot be pickled (they would be "
                "written out in plain text): pass the key as api_key / RERANK_API_KEY instead"
            )
        if not self._key_from_env:
            logger.info("pickling %s without its api_key: the copy reads RERANK_API_KEY", self.name)
        settings = {
            "protocol": self.protocol,
            "path": self.path,
            "model": self.model,
            "timeout": self.timeout,
            "deadline": self.deadline,
            "batch_size": self.batch_size,
            "max_concurrency": self.max_concurrency,
            "retry": self.retry,
            "on_error": self.on_error,
            "truncate": self.truncate,
        }
        return (_rebuild, (self._url.get_secret_value(), settings))

    # -- HTTP plumbing -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    def _new_async_client(self) -> tuple[tuple[Any, asyncio.Semaphore], Callable[[], Awaitable[None]]]:
        base, params = split_query(self._url.get_secret_value())
        client = self._httpx.AsyncClient(
            base_url=base,
            params=params,
            headers=self._headers(),
            timeout=self.timeout,
            limits=self._httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            ),
        )
        return (client, asyncio.Semaphore(self.max_concurrency)), client.aclose

    async def aclose(self) -> None:
        """Close the running event loop's pooled connections now (they close with the loop anyway)."""
        await self._async_clients.aclose()

    def _payload(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        if self.protocol == "tei":
            return {"query": query, "texts": list(texts), "raw_scores": False, "truncate": self.truncate}
        payload: dict[str, Any] = {"query": query, "documents": list(texts), "top_n": len(texts)}
        if self.model is not None:
            payload["model"] = self.model
        return payload

    @property
    def _who(self) -> str:
        return f"rerank server {split_query(self.base_url)[0]}{self.path}"

    def _parse(self, response: Any, n: int) -> list[float]:
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientError(
                f"{self._who} answered HTTP {status}",
                status=status,
                retry_after=parse_retry_after(response.headers),
            )
        if status >= 400:
            raise BackendError(
                f"{self._who} answered HTTP {status}: {redact(response.text, self._secrets)[:300]}"
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, ValueError) as exc:
            raise BackendError(
                f"{self._who} answered with malformed JSON: {redact(response.text, self._secrets)[:200]!r}"
            ) from exc
        try:
            if self.protocol == "tei":
                pairs = [(r["index"], r["score"]) for r in body]
            else:
                pairs = [(r["index"], r["relevance_score"]) for r in body["results"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(
                f"{self._who} answered in an unexpected shape ({exc!r}): {redact(str(body), self._secrets)[:200]}"
            ) from exc
        return merge_indexed(pairs, n, self._who)

    def _batches(self, texts: Sequence[str]) -> list[Sequence[str]]:
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    # -- scoring ---------------------------------------------------------------------------------------

    async def _apost(self, query: str, batch: Sequence[str], end: float | None) -> list[float]:
        client, bound = await self._async_clients.get()

        async def once() -> list[float]:
            async with bound:
                try:
                    response = await client.post(self.path, json=self._payload(query, batch))
                except self._httpx.HTTPError as exc:
                    message = redact(f"{type(exc).__name__}: {exc}", self._secrets)
                    if isinstance(
                        exc, self._httpx.TransportError
                    ):  # timeouts, refused and dropped connections
                        raise TransientError(f"{self._who}: {message}") from None
                    raise BackendError(f"{self._who}: {message}") from None
            return self._parse(response, len(batch))

        return await self.retry.acall(once, end=end, who=self._who)

    def fingerprint(self) -> Mapping[str, Any]:
        return {"base_url": self.base_url, "path": self.path, "protocol": self.protocol, "model": self.model}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return run_sync(self.ascore(query, texts))

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        async with bounded(self.deadline, self._who) as end:
            parts = await gather_cancelling([self._apost(query, b, end) for b in self._batches(texts)])
        return [s for part in parts for s in part]


def _rebuild(base_url: str, settings: dict[str, Any]) -> RemoteScorer:
    return RemoteScorer(base_url, **settings)
