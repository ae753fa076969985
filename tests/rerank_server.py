"""A rerank server on 127.0.0.1 speaking the real protocols, with scripted faults.

Routes: ``POST /rerank`` (Text Embeddings Inference), ``POST /v1/rerank`` (vLLM / Infinity / Jina),
``POST /v2/rerank`` (Cohere). Scores are token overlap between query and document, so tests can
predict them; results come back sorted by score (i.e. out of input order), as real servers do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"\w+")


def overlap(query: str, doc: str) -> float:
    q = {w.casefold() for w in _WORD.findall(query)}
    d = {w.casefold() for w in _WORD.findall(doc)}
    return round(len(q & d) / len(q), 6) if q else 0.0


class RerankServer:
    """Start with ``with RerankServer() as server:``; ``server.url`` is its root.

    ``server.faults`` is a queue of actions, one consumed per request:
    ``("status", code, headers)``, ``("hang", seconds)``, ``("malformed",)``, ``("drop_index_key",)``,
    ``("duplicate",)``, ``("top", k)`` (answer only the best k), ``("delay", seconds)``.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.faults: deque[tuple[Any, ...]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    fault = server.faults.popleft() if server.faults else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server._handle(self, body, fault)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> RerankServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)

    def _handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any], fault: tuple[Any, ...] | None) -> None:
        if self.delay:
            time.sleep(self.delay)
        kind = fault[0] if fault else None
        if kind == "status":
            self._send(
                h,
                fault[1],
                json.dumps({"error": f"scripted {fault[1]}"}).encode(),
                fault[2] if len(fault) > 2 else None,
            )
            return
        if kind == "hang":
            time.sleep(fault[1])
        if kind == "delay":
            time.sleep(fault[1])
        if kind == "malformed":
            self._send(h, 200, b'{"results": [{"index": 0, "relevance_sc')
            return
        docs = body.get("texts") if h.path == "/rerank" else body.get("documents")
        query = body.get("query", "")
        ranked = sorted(
            ((overlap(query, d), i) for i, d in enumerate(docs or [])), key=lambda x: (-x[0], x[1])
        )
        if h.path != "/rerank" and body.get("top_n"):
            ranked = ranked[: body["top_n"]]
        if kind == "top":
            ranked = ranked[: fault[1]]
        if kind == "duplicate" and ranked:
            ranked = [*ranked, ranked[0]]
        score_key = "score" if h.path == "/rerank" else "relevance_score"
        results = [{"index": i, score_key: s} for s, i in ranked]
        if kind == "drop_index_key" and results:
            del results[0]["index"]
        if h.path == "/rerank":
            payload: Any = results
        elif h.path == "/v1/rerank":
            payload = {
                "id": "rerank-1",
                "model": body.get("model"),
                "results": results,
                "usage": {"total_tokens": 1},
            }
        elif h.path == "/v2/rerank":
            payload = {
                "id": "c0ffee",
                "results": results,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
            }
        else:
            self._send(h, 404, b'{"error": "not found"}')
            return
        self._send(h, 200, json.dumps(payload).encode())
