"""Rerank servers over HTTP: Hugging Face TEI and the Jina/Cohere-style ``/v1/rerank`` API.

``protocol="tei"``  ``POST {base_url}/rerank`` with ``{"query", "texts", "raw_scores", "truncate"}``;
                    the answer is a list of ``{"index", "score"}`` (Text Embeddings Inference).
``protocol="v1"``   ``POST {base_url}/v1/rerank`` with ``{"model", "query", "documents", "top_n"}``;
                    the answer is ``{"results": [{"index", "relevance_score"}, ...]}`` (vLLM,
                    Infinity, Jina-compatible servers).

Candidates are sent in client-side batches (servers cap documents per request), batches of one
async call run concurrently under a per-scorer bound, and connections are pooled. Scores are
mapped back by ``index``; a missing, repeated or out-of-range index is a ``BackendError`` (so
``on_error="keep_order"`` falls back), never a silently lost or guessed document. Timeouts,
retries, the deadline, secrets, per-loop clients, rate limits and usage are
:class:`~rerankers_plugins.scorers._http.HTTPScorer`'s; a server's ``usage`` report (vLLM, Infinity,
Jina: ``prompt_tokens`` / ``total_tokens``) is counted in ``scorer.usage``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from rerankers_plugins._secret import CredentialURL, Secret, shown_url, split_query
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._http import Answer, Gate, HTTPScorer, OnError, Send, merge_indexed
from rerankers_plugins.scorers.limits import RateLimit, usage_from
from rerankers_plugins.scorers.retry import RetryPolicy
from rerankers_plugins.templates import TemplateLike
from rerankers_plugins.types import ScoreScale

__all__ = ["RemoteScorer"]

Protocol = Literal["tei", "v1"]


class RemoteScorer(HTTPScorer):
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
        retry: a :class:`~rerankers_plugins.scorers.retry.RetryPolicy`.
        on_error: ``"raise"`` (default) or ``"keep_order"``: after the last retry, return every
            candidate in its original order, marked in ``details``, with a warning.
        truncate: ask the server to truncate long inputs (TEI) instead of rejecting them.
        rate_limit: a :class:`~rerankers_plugins.scorers.limits.RateLimit` with
            ``requests_per_minute`` (a hosted API's limit: Jina allows 60 on a free key), shared by
            every scorer of the same key and ``base_url`` in the process, threads and event loops
            included. Every attempt waits for its turn; a 429 pauses every caller of the key; a
            request that could not start before the deadline raises ``DeadlineExceeded`` unsent.
            ``units_per_minute`` is refused: a server reports tokens only after the fact (they are
            counted in ``usage``). None (default): no limit.
        document_template: what the server's model reads of each candidate (None: its text), as
            for :class:`~rerankers_plugins.CrossEncoderScorer`.

    Batches of one call run concurrently; when one fails for good, its siblings are cancelled.
    The sync methods run the async path (``asyncio.run``), so both share deadline and cancellation;
    connections are pooled per event loop (a sync call opens its own). One scorer serves any number
    of threads and event loops at once. Pickling keeps the settings, not the key: an unpickled
    scorer reads ``RERANK_API_KEY`` again (a ``base_url`` holding credentials cannot be pickled).
    """

    scale = ScoreScale.RELEVANCE
    extra = "remote"
    key_env = "RERANK_API_KEY"

    def __init__(
        self,
        base_url: CredentialURL,
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
        rate_limit: RateLimit | None = None,
        document_template: TemplateLike | None = None,
    ) -> None:
        if protocol not in ("tei", "v1"):
            raise ConfigError(f"protocol must be 'tei' or 'v1', got {protocol!r}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url must be an http(s) URL")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigError(f"path must start with '/', got {path!r}")
        url = base_url.rstrip("/")
        super().__init__(
            url,
            api_key=api_key,
            key_required=False,
            timeout=timeout,
            deadline=deadline,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            retry=retry,
            on_error=on_error,
            rate_limit=rate_limit,
            document_template=document_template,
        )
        self.protocol = protocol
        self.model = model
        self.truncate = truncate
        self.path = path or ("/rerank" if protocol == "tei" else "/v1/rerank")
        shown = shown_url(url)
        self.name = f"{protocol}:{model or shown}"
        self._server = f"rerank server {split_query(shown)[0]}{self.path}"

    def _repr_args(self) -> str:
        return f"{self.base_url!r}, protocol={self.protocol!r}, model={self.model!r}"

    def _settings(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        own = {"protocol": self.protocol, "path": self.path, "model": self.model, "truncate": self.truncate}
        return (self._raw_url,), own

    @property
    def _who(self) -> str:
        return self._server

    def _check_rate_limit(self, limit: RateLimit) -> None:
        if limit.units_per_minute is not None:
            raise ConfigError(
                "RemoteScorer: RateLimit(units_per_minute=...) cannot apply to a rerank server, which "
                "reports tokens only after a request (they are counted in scorer.usage): use "
                "requests_per_minute"
            )

    # -- the protocol ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    def _new_async(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        """A pooled client and the bound on its requests in flight, for the running loop."""
        base, params = self._split_url()
        client = self._httpx.AsyncClient(
            base_url=base or "",
            params=params,
            headers=self._headers(),
            timeout=self.timeout,
            limits=self._httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            ),
        )
        return (client, asyncio.Semaphore(self.max_concurrency)), client.aclose

    def _payload(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        if self.protocol == "tei":
            return {"query": query, "texts": list(texts), "raw_scores": False, "truncate": self.truncate}
        payload: dict[str, Any] = {"query": query, "documents": list(texts), "top_n": len(texts)}
        if self.model is not None:
            payload["model"] = self.model
        return payload

    def _parse(self, response: Any, n: int) -> Answer:
        if response.status_code >= 400:
            raise self._status_error(self._who, response.status_code, response.headers, response.text)
        try:
            body = response.json()
        except (json.JSONDecodeError, ValueError) as exc:
            raise BackendError(
                f"{self._who} answered with malformed JSON: {self._redact(response.text)[:200]!r}"
            ) from exc
        try:
            if self.protocol == "tei":
                pairs = [(r["index"], r["score"]) for r in body]
            else:
                pairs = [(r["index"], r["relevance_score"]) for r in body["results"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(
                f"{self._who} answered in an unexpected shape ({exc!r}): {self._redact(str(body))[:200]}"
            ) from exc
        usage = usage_from(body.get("usage")) if isinstance(body, dict) else None
        return Answer(merge_indexed(pairs, n, self._who), usage)

    async def _sender(self, query: str, end: float | None) -> Send:
        client, bound = await self._async_clients.get()

        async def send(batch: Sequence[str], gate: Gate) -> Answer:
            async with bound:
                await gate()
                try:
                    response = await client.post(self.path, json=self._payload(query, batch))
                except self._httpx.HTTPError as exc:
                    raise self._client_error(self._who, exc) from None
            return self._parse(response, len(batch))

        return send

    def fingerprint(self) -> Mapping[str, Any]:
        return {"base_url": self.base_url, "path": self.path, "protocol": self.protocol, "model": self.model}
